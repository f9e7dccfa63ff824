package io.roadmonitor.sdk

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.time.Instant
import java.util.Base64
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicReference

/** Against a real fleet server: ROADMON_TEST_URL (base URL ending in /v1), ROADMON_TEST_TOKEN (a device
 * token of ROADMON_TEST_DEVICE). tests/test_client_kotlin.py starts the server and runs these. */
class RoadMonitorAPITest {
    private val url = System.getenv("ROADMON_TEST_URL") ?: error("ROADMON_TEST_URL is not set")
    private val token = System.getenv("ROADMON_TEST_TOKEN") ?: error("ROADMON_TEST_TOKEN is not set")
    private val device = System.getenv("ROADMON_TEST_DEVICE") ?: error("ROADMON_TEST_DEVICE is not set")
    private val uuid7 = Regex("^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    private val pothole = listOf(mapOf("bbox" to listOf(100, 150, 250, 300), "class" to "pothole", "confidence" to 0.87))

    @Test
    fun `the guide's usage submits and calls back with the event id`() {
        val api = RoadMonitorAPI(apiKey = token, baseURL = url)
        val got = AtomicReference<Result<String>>()
        val done = CountDownLatch(1)
        api.submitDetections(deviceID = device, GPS = Triple(12.9716, 77.5946, 5.0), detections = pothole) { result ->
            got.set(result)
            done.countDown()
        }
        assertTrue(done.await(30, TimeUnit.SECONDS))
        val eventID = got.get().getOrThrow()
        assertTrue(uuid7.matches(eventID), eventID)
        api.close()
    }

    @Test
    fun `a resent submission is delivered once and answers the same id`() {
        val api = RoadMonitorAPI(apiKey = token, baseURL = url)
        val at = Instant.now().minusSeconds(7)
        val first = api.submitDetectionsBlocking(device, Triple(12.9720, 77.5950, 4.0), pothole, timestamp = at)
        val again = api.submitDetectionsBlocking(device, Triple(12.9720, 77.5950, 4.0), pothole, timestamp = at)
        assertEquals(first, again)
    }

    @Test
    fun `an image travels as base64 JPEG`() {
        val jpeg = Base64.getDecoder().decode(System.getenv("ROADMON_TEST_JPEG_B64"))
        val api = RoadMonitorAPI(apiKey = token, baseURL = url)
        val id = api.submitDetectionsBlocking(device, Triple(12.9730, 77.5960, 4.0), pothole, imageBytes = jpeg)
        assertTrue(uuid7.matches(id))
    }

    @Test
    fun `invalid input is refused with the field named and not retried`() {
        val api = RoadMonitorAPI(apiKey = token, baseURL = url, backoffMs = 1)
        val e = assertThrows(RoadMonitorException::class.java) {
            api.submitDetectionsBlocking(device, Triple(95.0, 77.5946, 5.0), pothole)
        }
        assertEquals(400, e.status)
        assertTrue(e.detail.startsWith("gps.lat"), e.detail)
        assertTrue(!e.retryable)
    }

    @Test
    fun `a wrong key fails through the callback with 401`() {
        val api = RoadMonitorAPI(apiKey = "rmt_00_wrong", baseURL = url)
        val got = AtomicReference<Result<String>>()
        val done = CountDownLatch(1)
        api.submitDetections(device, Triple(12.9716, 77.5946, 5.0), pothole) { got.set(it); done.countDown() }
        assertTrue(done.await(30, TimeUnit.SECONDS))
        assertEquals(401, (got.get().exceptionOrNull() as RoadMonitorException).status)
        api.close()
    }

    @Test
    fun `no server is an IOException after the retries`() {
        val api = RoadMonitorAPI(apiKey = token, baseURL = "http://127.0.0.1:9/v1", maxAttempts = 2, backoffMs = 1)
        assertThrows(java.io.IOException::class.java) {
            api.submitDetectionsBlocking(device, Triple(12.9716, 77.5946, 5.0), pothole)
        }
    }

    @Test
    fun `json round trip escapes what it must`() {
        val value = mapOf("s" to "a\"b\\c\n\u0001é", "n" to listOf(1, 2.5, -3e-4), "b" to true, "z" to null,
                          "m" to mapOf("k" to listOf<Any>()))
        val text = Json.encode(value)
        assertEquals("{\"s\":\"a\\\"b\\\\c\\n\\u0001é\",\"n\":[1,2.5,-3.0E-4],\"b\":true,\"z\":null,\"m\":{\"k\":[]}}", text)
        val back = Json.decode(text) as Map<*, *>
        assertEquals("a\"b\\c\n\u0001é", back["s"])
        assertEquals(listOf(1.0, 2.5, -3e-4), back["n"])
        assertThrows(IllegalArgumentException::class.java) { Json.encode(mapOf("x" to Double.NaN)) }
    }
}
