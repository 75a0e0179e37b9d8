"""
Side channels between concurrent runs in different slots (docs/decisions/0010-side-channels-between-runs.rst):
what a run could learn of another's files, imports, locks and load through state the kernel keeps
for the whole host. Each deny test sits next to its nearest allowed twin; the file runs with fresh
interpreters and with the warm sandbox, and the sabotage run proves each deny test fails without
our layer. What stays open is measured by benchmarks/side_channels.py, not tested here.
"""
import textwrap

import pytest

from .probe import probe
from .test_default_deny import CALL

# A file every slot's runs read and map: the stdlib's os.py, from the sandbox venv's python.
SHARED = "import os\nshared = open(os.__file__, 'rb')\n"
LIBC = """\
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
page = _libc.mmap(None, 4096, 1, 2, shared.fileno(), 0)  # PROT_READ, MAP_PRIVATE: keyed by the file
buffer = ctypes.create_string_buffer(4096)
"""


# --- Another slot's disk use --------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "..", "../.."])
def test_deny_disk_use_of_any_file_system(run, path):
    """'..' is the slot's tmpfs, '../..' holds every slot's: statfs told another run's use of its own."""
    assert probe(run, f"import os; os.statvfs({path!r})") == "ENOSYS", path


def test_deny_disk_use_through_an_o_path_descriptor(run):
    """Landlock checks no O_PATH open: a descriptor of any directory, fstatfs'd."""
    assert probe(run, "import os; os.fstatvfs(os.open('../..', os.O_PATH))") == "ENOSYS"


def test_allow_sizes_of_its_own_files(run):
    assert probe(run, """
        import os
        open('tmp/data', 'wb').write(b'x' * 5000)
        assert os.stat('tmp/data').st_size == 5000 and os.fstat(os.open('tmp', os.O_RDONLY)).st_nlink >= 2
    """) == "ok"


# --- Locks on files every run can open ---------------------------------------------------------

def test_deny_flock_on_a_shared_file(run):
    """An exclusive flock needs only a read-only descriptor; another run's flock would see it held."""
    assert probe(run, SHARED + "import fcntl; fcntl.flock(shared, fcntl.LOCK_EX | fcntl.LOCK_NB)") == "ENOSYS"


@pytest.mark.parametrize(("name", "command"), [("F_GETLK", 5), ("F_OFD_GETLK", 36)])
def test_deny_reading_who_holds_a_lock(run, name, command):
    """The holder of any lock on a file the run can open: another run's, on a shared file."""
    assert probe(run, SHARED + "import fcntl, struct\n"
                 f"fcntl.fcntl(shared, {command}, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0))") == "EPERM", name


def test_allow_record_locks_on_its_own_files(run):
    """sqlite on a file in tmp/ (POSIX record locks), and fcntl.lockf."""
    assert probe(run, """
        import fcntl, sqlite3
        db = sqlite3.connect('tmp/grades.db')
        db.execute('create table t (x)'); db.execute('insert into t values (1)'); db.commit()
        assert db.execute('select x from t').fetchall() == [(1,)]
        db.close()
        with open('tmp/lock', 'w') as own:
            fcntl.lockf(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
    """) == "ok"


# --- Futexes in pages of shared files ----------------------------------------------------------

def test_deny_waking_a_futex_in_a_shared_files_page(run):
    """Keyed by the file: a run waiting there would be woken by another run's FUTEX_WAKE."""
    assert probe(run, CALL + SHARED + LIBC + "call(202, page, 1, 1, 0, 0, 0)") == "EPERM"  # FUTEX_WAKE


def test_deny_a_thread_exit_waking_a_futex_in_a_shared_files_page(run):
    """set_tid_address: at a thread's exit the kernel wakes (unflagged) the futex it names."""
    assert probe(run, CALL + SHARED + LIBC + "call(218, page)") == "EPERM"


def test_allow_threads_their_locks_and_joins(run):
    assert probe(run, CALL + textwrap.dedent("""
        import threading
        done, lock, ready = [], threading.Lock(), threading.Condition()
        def work():
            with lock, ready:
                done.append(sum(range(1000)))
                ready.notify()
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert done == [499500] * 4
        word = ctypes.c_int(0)
        call(202, ctypes.addressof(word), 1 | 128, 1, 0, 0, 0)  # FUTEX_WAKE_PRIVATE
        thread_id = ctypes.c_ulong()
        start = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(lambda _: 0)
        assert _libc.pthread_create(ctypes.byref(thread_id), None, start, None) == 0
        assert _libc.pthread_join(thread_id, None) == 0  # glibc waits unflagged for the thread's exit
    """)) == "ok"


# --- The page cache: which modules other runs import -------------------------------------------

@pytest.mark.parametrize(("name", "call", "refused"), [
    ("mincore", "call(27, page, 4096, ctypes.addressof(buffer))", "ENOSYS"),
    ("preadv2_nowait", "os.preadv(shared.fileno(), [bytearray(4096)], 0, os.RWF_NOWAIT)", "EPERM"),
    ("cachestat", "call(451, shared.fileno(), 0, 0, 0)", "EPERM"),
    # Drops the file's pages: another run's next read of it then shows (by its time) whether it was read.
    ("fadvise_dontneed", "os.posix_fadvise(shared.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)", "EPERM"),
])
def test_deny_page_cache_residency(run, name, call, refused):
    assert probe(run, CALL + SHARED + LIBC + call) == refused, name


def test_allow_reading_mapping_and_hinting_shared_files(run):
    assert probe(run, CALL + SHARED + LIBC + textwrap.dedent("""
        assert os.preadv(shared.fileno(), [bytearray(16)], 0) == 16
        assert os.preadv(shared.fileno(), [bytearray(16)], 0, os.RWF_HIPRI) == 16
        os.posix_fadvise(shared.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        os.posix_fadvise(shared.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
        assert ctypes.string_at(page, 3) == shared.read(3)
    """)) == "ok"


# --- The host's load: threads, memory, CPU use ---------------------------------------------------

def test_deny_system_load_through_sysinfo(run):
    """The host's thread count and free memory, which every run's processes change."""
    assert probe(run, CALL + "buffer = ctypes.create_string_buffer(128)\ncall(99, ctypes.addressof(buffer))") == "EPERM"


@pytest.mark.parametrize("path", ["/proc/loadavg", "/proc/meminfo", "/proc/stat", "/proc/self/stat",
                                  "/sys/devices/system/cpu/cpu0/cpuidle/state0/usage",
                                  "/sys/devices/system/cpu/cpufreq"])
def test_deny_reading_system_load(run, path):
    """/proc/loadavg names the last pid allocated; cpuidle counts each CPU's idle entries."""
    assert probe(run, f"import os\nos.listdir({path!r}) if os.path.isdir({path!r}) else open({path!r}).read()") \
        == "EACCES", path


def test_allow_counting_cpus(run):
    assert probe(run, """
        import os
        assert os.cpu_count() >= 1 and len(os.sched_getaffinity(0)) >= 1
        assert open('/sys/devices/system/cpu/possible').read().strip()
        assert open('/sys/devices/system/cpu/online').read().strip()
    """) == "ok"
