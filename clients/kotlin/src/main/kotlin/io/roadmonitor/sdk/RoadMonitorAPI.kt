package io.roadmonitor.sdk

import java.io.IOException
import java.net.HttpURLConnection
import java.net.URL
import java.time.Instant
import java.util.Base64
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/** The server refused a submission: [status] is the HTTP code, [detail] the server's reason. */
class RoadMonitorException(
    val status: Int,
    val detail: String,
    val retryable: Boolean,
    val retryAfterMs: Long? = null
) : IOException("HTTP $status: $detail")

/**
 * The deployment guide's Android SDK, on the JDK alone (HttpURLConnection, java.util.Base64, java.time), so it
 * runs on Android (API 26+) and on any JVM. `submitDetections` posts the guide's body to `<baseURL>/detections`
 * and calls back with the submission's event id. Network errors, 429 and 5xx are retried with exponential
 * backoff (honouring Retry-After up to [maxBackoffMs]); the server derives ids from the body, so a retry
 * never doubles a submission, and a 409 (already received) counts as success.
 */
class RoadMonitorAPI(
    private val apiKey: String,
    private val baseURL: String = "https://api.roadquality-monitor.io/v1",
    private val maxAttempts: Int = 4,
    private val backoffMs: Long = 500,
    private val maxBackoffMs: Long = 30_000,
    private val timeoutMs: Int = 10_000,
    private val executor: ExecutorService = Executors.newSingleThreadExecutor()
) {
    fun submitDetections(
        deviceID: String,
        GPS: Triple<Double, Double, Double>,  // lat, lon, accuracy
        detections: List<Map<String, Any>>,
        imageBytes: ByteArray? = null,
        timestamp: Instant = Instant.now(),
        callback: (Result<String>) -> Unit
    ) {
        executor.execute {
            val result = runCatching { submitDetectionsBlocking(deviceID, GPS, detections, imageBytes, timestamp) }
            callback(result)
        }
    }

    /** The same, on the calling thread: the event id, or a [RoadMonitorException] / IOException. */
    fun submitDetectionsBlocking(
        deviceID: String,
        GPS: Triple<Double, Double, Double>,
        detections: List<Map<String, Any>>,
        imageBytes: ByteArray? = null,
        timestamp: Instant = Instant.now()
    ): String {
        val body = LinkedHashMap<String, Any?>()
        body["device_id"] = deviceID
        body["timestamp"] = timestamp.toString()
        body["gps"] = mapOf("lat" to GPS.first, "lon" to GPS.second, "accuracy" to GPS.third)
        body["detections"] = detections
        if (imageBytes != null) body["image_base64"] = Base64.getEncoder().encodeToString(imageBytes)
        return postWithRetries(Json.encode(body))
    }

    fun close() = executor.shutdown()

    private fun postWithRetries(json: String): String {
        var attempt = 0
        while (true) {
            attempt++
            try {
                return post(json)
            } catch (e: IOException) {
                val retryable = e !is RoadMonitorException || e.retryable
                if (!retryable || attempt >= maxAttempts) throw e
                Thread.sleep(delayMs(attempt, (e as? RoadMonitorException)?.retryAfterMs))
            }
        }
    }

    private fun delayMs(attempt: Int, retryAfterMs: Long?): Long {
        val backoff = minOf(maxBackoffMs, backoffMs shl minOf(attempt - 1, 20))
        return minOf(maxBackoffMs, maxOf(backoff, retryAfterMs ?: 0))
    }

    private fun post(json: String): String {
        val conn = URL("$baseURL/detections").openConnection() as HttpURLConnection
        try {
            conn.requestMethod = "POST"
            conn.connectTimeout = timeoutMs
            conn.readTimeout = timeoutMs
            conn.doOutput = true
            conn.setRequestProperty("Authorization", "Bearer $apiKey")
            conn.setRequestProperty("Content-Type", "application/json")
            conn.setRequestProperty("User-Agent", "road-monitor-kotlin")
            conn.outputStream.use { it.write(json.toByteArray(Charsets.UTF_8)) }
            val status = conn.responseCode
            val stream = if (status < 400) conn.inputStream else conn.errorStream
            val text = stream?.use { it.readBytes().toString(Charsets.UTF_8) } ?: ""
            val parsed = runCatching { Json.decode(text) as? Map<*, *> }.getOrNull()
            when (status) {
                202 -> return parsed?.get("event_id") as? String
                    ?: throw RoadMonitorException(status, "No event_id in response", retryable = false)
                409 -> return parsed?.get("event_id") as? String  // already received: delivered
                    ?: throw RoadMonitorException(status, "No event_id in response", retryable = false)
            }
            val detail = parsed?.get("detail")?.toString() ?: text
            val retryAfterMs = conn.getHeaderField("Retry-After")?.toLongOrNull()?.let { it * 1000 }
            throw RoadMonitorException(status, detail, status == 429 || status >= 500, retryAfterMs)
        } finally {
            conn.disconnect()
        }
    }
}
