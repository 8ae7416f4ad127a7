# _thread for the C6 run's "Pico core 0" variant (host_tools/emu/c6.py --offswitch core1),
# deployed as /_thread.py: the off-switch then installs itself as on a Pico (its proxy task on
# this core, every 20 ms) and hands its Core to "core 1", which this board does not have: the
# Core is never run. What is measured is a Pico's core 0; core 1's own work is not in it.
class _Lock:
    def acquire(self, waitflag=1, timeout=-1):
        return True

    def release(self):
        pass

    def locked(self):
        return False

    def __enter__(self):
        return True

    def __exit__(self, *exc):
        return None


def allocate_lock():
    return _Lock()


def stack_size(size=0):
    return 0


started = []  # what start_new_thread was given (never run)


def start_new_thread(fn, args, kwargs=None):
    started.append(fn)
    return 1


def get_ident():
    return 1
