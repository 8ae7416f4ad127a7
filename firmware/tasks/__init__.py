# One module per HASM task. Each defines a class built by the kernel as
# Task(port, hw); modules keep no state of their own at module level.
