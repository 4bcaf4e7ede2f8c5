"""A trained bundle's life after its first training: retraining from it
(``init_from``), adding a task from a few labelled rows (``adapt``), and the gate that
decides whether a new bundle may replace the one in production (``gate``)."""
