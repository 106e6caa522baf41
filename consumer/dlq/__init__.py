"""The dead-letter queue: the header contract (`headers`), the writer the pipeline uses
(`writer`), and the operator tools `dlq inspect|replay` (`cli`, `inspection`, `replay`)."""
