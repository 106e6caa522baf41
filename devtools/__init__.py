"""Development tools for profile-consumer: the Target simulator, the embedded Kafka broker
(Tansu), sample events, the Avro encoder and the end-to-end demo.

Not part of the product: the wheel ships `consumer/` only, and the product never imports this
package except lazily, when `profile-consumer demo` or `profile-consumer simulate-target` runs
(from a clone installed with `pip install -e '.[dev]'`). `python -m devtools` runs them too.
"""
