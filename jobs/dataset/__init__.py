"""Building blocks of the dataset preparation job (`jobs.prepare`).

- `errors`: the errors the job raises, and the wrapping of Spark failures.
- `sources`: lake table locations and reads at a pinned Delta version.
- `labels`: trial intervals from behaviour events and the label of each step.
- `splits`: assignment of sessions to train, validation and test.
- `normalization`: per-channel statistics of training steps.
- `manifest`: the JSON record of a prepared dataset and its content hash.
"""
