"""Knowledge distillation: a trained bundle (the teacher) trains a smaller student on
the same tasks (``ecomtl distill TEACHER_BUNDLE STUDENT_CONFIG``).

- ``teacher.py``: the teacher's outputs on the student's train rows, once, on the driver,
  stored with the rows (``PreparedSplit.teacher``); its checks (tasks, heads, label
  spaces, tokenizer).
- ``loss.py``: the per-task mix of each head's ``distill_loss`` with its hard loss.
- ``run.py``: the driver — ``train_experiment`` with a teacher, and the teacher's scores
  beside the student's.
"""
