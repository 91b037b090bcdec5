// The Kotlin host test of cohort-mobile, run by `mobile/tests/kotlin_host.rs`: the generated
// Kotlin bindings (the code an Android app runs; only the library loading differs) drive the
// real `cohort_mobile` shared library through JNA against a real coordinator on loopback.
//
// Checks: stop() before start is refused; enrollment into a Kotlin SecretStore; three SecAgg+
// rounds with examples from a Kotlin ExampleSource, with the device unplugged after the first
// (no check-in until plugged in again); a throwing source, a source with the wrong number of
// features and NaN features give typed errors; stop() twice during training.

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import uniffi.cohort_mobile.*

const val FEATURES = 64

fun check(cond: Boolean, what: () -> String) {
    if (!cond) throw AssertionError(what())
}

class Source(path: String) : ExampleSource {
    private val data = ByteBuffer.wrap(File(path).readBytes()).order(ByteOrder.LITTLE_ENDIAN)
    val n = data.getInt(0).toLong()
    @Volatile var mode: String? = null

    override fun count(): ULong {
        if (mode == "throw") throw IllegalStateException("the photo library is locked")
        return n.toULong()
    }

    override fun batch(start: ULong, len: UInt): ExampleBatch {
        val s = start.toInt()
        val l = len.toInt()
        val fOff = 4 + s * FEATURES * 4
        var features = data.array().copyOfRange(fOff, fOff + l * FEATURES * 4)
        val lOff = 4 + (n.toInt() * FEATURES * 4) + s * 4
        val labels = data.array().copyOfRange(lOff, lOff + l * 4)
        when (mode) {
            "short" -> features = features.copyOfRange(0, features.size - 4)
            "nan" -> ByteBuffer.wrap(features).order(ByteOrder.LITTLE_ENDIAN).putFloat(0, Float.NaN)
        }
        return ExampleBatch(features, labels)
    }
}

class Device : DeviceState {
    @Volatile var charging = true

    override fun read(): DeviceReading =
        DeviceReading(charging, true, true, 80.toUByte(), false, false)
}

class Secrets : SecretStore {
    val values = java.util.concurrent.ConcurrentHashMap<String, ByteArray>()

    override fun load(key: String): ByteArray? = values[key]

    override fun store(key: String, value: ByteArray) {
        values[key] = value
    }

    override fun delete(key: String) {
        values.remove(key)
    }
}

class Listener : ProgressListener {
    @Volatile var client: CohortClient? = null
    @Volatile var stopAtStep: Long? = null
    @Volatile var stoppedAt: Long = 0
    val stopResults = java.util.Collections.synchronizedList(mutableListOf<Any>())
    @Volatile var sawTraining = false

    override fun onProgress(progress: Progress) {
        if (progress.phase == Phase.TRAINING) sawTraining = true
        val at = stopAtStep ?: return
        if (progress.phase == Phase.TRAINING && progress.step.toLong() >= at && stoppedAt == 0L) {
            stoppedAt = System.nanoTime()
            client!!.stop()
            stopResults.add("first stop accepted")
            try {
                client!!.stop()
                stopResults.add("second stop accepted")
            } catch (e: MobileException.AlreadyStopping) {
                stopResults.add(e)
            }
        }
    }

    override fun onParticipation(participation: Participation) {}
}

fun main() {
    val source = Source(System.getenv("COHORT_EXAMPLES"))
    val device = Device()
    val secrets = Secrets()
    val listener = Listener()
    val config = ClientConfig(
        server = System.getenv("COHORT_SERVER"),
        serverName = "localhost",
        cacheDir = System.getenv("COHORT_STATE"),
        password = "kotlin host password",
        task = null,
        requireCharging = true,
        requireUnmetered = false,
        requireIdle = false,
        minBatteryPercent = 0.toUByte(),
        maxRounds = null,
        recheckMs = 50.toULong(),
    )
    val client = CohortClient(config, source, device, secrets, listener)
    listener.client = client

    try {
        client.stop()
        throw AssertionError("stop() before start was accepted")
    } catch (e: MobileException.NotRunning) {
    }
    client.enroll("kotlin-host", null, System.getenv("COHORT_FINGERPRINT"))
    check(client.isEnrolled()) { "enroll() stored no credentials" }
    check(secrets.values.containsKey("credentials.json")) { "secrets: ${secrets.values.keys}" }

    // Three rounds (COHORT_HOST_ROUNDS, when more); unplugged after the first.
    val wanted = maxOf(3, System.getenv("COHORT_HOST_ROUNDS")?.toInt() ?: 3)
    val trainingMs = mutableListOf<ULong>()
    var rounds = 0
    var unplugged = false
    val started = System.nanoTime()
    val roundMillis = mutableListOf<Double>()
    while (rounds < wanted) {
        val t0 = System.nanoTime()
        when (val p = client.participateOnce()) {
            is Participation.Contributed -> if (p.completed) {
                rounds += 1
                roundMillis.add((System.nanoTime() - t0) / 1e6)
                trainingMs.add(p.trainingMs)
            }
            is Participation.NotSelected -> Thread.sleep(minOf(p.retryAfterMs.toLong(), 300L))
            else -> {}
        }
        if (rounds == 1 && !unplugged) {
            unplugged = true
            device.charging = false
            repeat(3) {
                val p = client.participateOnce()
                check(p is Participation.NotEligible) { "checked in while unplugged: $p" }
                check((p as Participation.NotEligible).reason.contains("external power")) { p.toString() }
            }
            device.charging = true
        }
    }
    check(listener.sawTraining) { "no training progress was reported" }
    val status = client.status()
    check(status.roundsCompleted.toInt() >= wanted) { "status: $status" }
    check(trainingMs.all { it > 0UL }) { "training times: $trainingMs" }
    println("kotlin host: training per round: ${trainingMs.joinToString()} ms")
    println("kotlin host: participate_once with a round: %s ms".format(
        roundMillis.joinToString { "%.0f".format(it) }))
    println("rounds: $wanted in %.2f s".format((System.nanoTime() - started) / 1e9))

    fun untilError(): MobileException {
        repeat(200) {
            try {
                when (val p = client.participateOnce()) {
                    is Participation.NotSelected -> Thread.sleep(minOf(p.retryAfterMs.toLong(), 300L))
                    is Participation.Left -> {}
                    else -> throw AssertionError("mode ${source.mode}: expected an error, got $p")
                }
            } catch (e: MobileException) {
                return e
            }
        }
        throw AssertionError("never selected")
    }

    for ((mode, ok) in listOf<Pair<String, (MobileException) -> Boolean>>(
        "throw" to { e -> e is MobileException.Host },
        "short" to { e -> e is MobileException.InvalidExamples },
        "nan" to { e -> e is MobileException.InvalidExamples },
    )) {
        source.mode = mode
        val e = untilError()
        check(ok(e)) { "$mode: ${e::class.simpleName}: ${e.message}" }
        println("bad source $mode: ${e::class.simpleName}: ${e.message}")
    }
    source.mode = null

    listener.stopAtStep = 3
    val e = untilError()
    val returned = System.nanoTime()
    check(e is MobileException.Stopped) { "${e::class.simpleName}: ${e.message}" }
    check(listener.stopResults.size == 2 && listener.stopResults[1] is MobileException.AlreadyStopping) {
        "stop results: ${listener.stopResults}"
    }
    println("stop() latency during training: %.1f ms".format((returned - listener.stoppedAt) / 1e6))
    println("kotlin host: ok")
}
