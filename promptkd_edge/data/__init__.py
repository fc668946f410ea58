"""Data: image listing and robust decoding, paired training views, labeled evaluation sets, the demo domain."""
