"""Data: phantom frames, readers, de-identification, TFRecord shards, tf.data input."""
