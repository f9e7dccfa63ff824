package io.roadmonitor.sdk

/** The little JSON the SDK needs, so it depends on nothing but the JDK (org.json is Android's, not the JVM's). */
object Json {
    fun encode(value: Any?): String = StringBuilder().also { write(it, value) }.toString()

    private fun write(out: StringBuilder, value: Any?) {
        when (value) {
            null -> out.append("null")
            is String -> string(out, value)
            is Boolean -> out.append(value)
            is Double -> { require(value.isFinite()) { "not finite: $value" }; out.append(value) }
            is Float -> { require(value.isFinite()) { "not finite: $value" }; out.append(value) }
            is Number -> out.append(value)
            is Map<*, *> -> {
                out.append('{')
                value.entries.forEachIndexed { i, (k, v) ->
                    if (i > 0) out.append(',')
                    string(out, k.toString()); out.append(':'); write(out, v)
                }
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                value.forEachIndexed { i, v -> if (i > 0) out.append(','); write(out, v) }
                out.append(']')
            }
            is Array<*> -> write(out, value.asList())
            is IntArray -> write(out, value.asList())
            is DoubleArray -> write(out, value.asList())
            else -> throw IllegalArgumentException("cannot encode ${value.javaClass.name} as JSON")
        }
    }

    private fun string(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c < ' ' -> out.append(String.format("\\u%04x", c.toInt()))
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    /** Parses a JSON text into Map / List / String / Double / Boolean / null. */
    fun decode(text: String): Any? {
        val p = Parser(text)
        val value = p.value()
        p.skipSpace()
        require(p.i == text.length) { "trailing characters at ${p.i}" }
        return value
    }

    private class Parser(val s: String) {
        var i = 0

        fun skipSpace() { while (i < s.length && s[i].isWhitespace()) i++ }

        fun value(): Any? {
            skipSpace()
            require(i < s.length) { "unexpected end of JSON" }
            return when (s[i]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> num()
            }
        }

        private fun literal(word: String, v: Any?): Any? {
            require(s.startsWith(word, i)) { "bad literal at $i" }
            i += word.length
            return v
        }

        private fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            i++
            skipSpace()
            if (s[i] == '}') { i++; return out }
            while (true) {
                skipSpace()
                val key = str()
                skipSpace()
                require(s[i] == ':') { "expected : at $i" }
                i++
                out[key] = value()
                skipSpace()
                when (s[i++]) { ',' -> {}; '}' -> return out; else -> throw IllegalArgumentException("bad object at $i") }
            }
        }

        private fun arr(): List<Any?> {
            val out = ArrayList<Any?>()
            i++
            skipSpace()
            if (s[i] == ']') { i++; return out }
            while (true) {
                out.add(value())
                skipSpace()
                when (s[i++]) { ',' -> {}; ']' -> return out; else -> throw IllegalArgumentException("bad array at $i") }
            }
        }

        private fun str(): String {
            require(s[i] == '"') { "expected a string at $i" }
            i++
            val out = StringBuilder()
            while (true) {
                val c = s[i++]
                when (c) {
                    '"' -> return out.toString()
                    '\\' -> {
                        val e = s[i++]
                        when (e) {
                            'n' -> out.append('\n'); 't' -> out.append('\t'); 'r' -> out.append('\r')
                            'b' -> out.append('\b'); 'f' -> out.append('\u000c')
                            'u' -> { out.append(s.substring(i, i + 4).toInt(16).toChar()); i += 4 }
                            else -> out.append(e)
                        }
                    }
                    else -> out.append(c)
                }
            }
        }

        private fun num(): Double {
            val start = i
            while (i < s.length && (s[i].isDigit() || s[i] in "+-.eE")) i++
            return s.substring(start, i).toDouble()
        }
    }
}
