"""
Every command line the web app runs as a sandbox user (or as root), in one place.

Each must match a ``Cmnd_Alias`` of the sudoers file that deploy/provision.sh writes, word for
word (a test compares them): sudo runs nothing else. The run's own command is codejail's, as
``jail_code`` builds it for ``CODE_JAIL``; another test builds it with codejail and compares.
"""

# codejail's cleanup of a run's tmp/ after ``sudo -u <user> /usr/bin/find <run>/tmp``.
CLEANUP_ARGS = ["-mindepth", "1", "-maxdepth", "1", "-exec", "rm", "-rf", "{}", ";"]


def program(user, python_bin):
    """A fresh interpreter running the run's ``jailed_code`` (sudoers: CODEJAIL_PYTHON)."""
    return ["sudo", "-u", user, "TMPDIR=tmp", python_bin, "-E", "-B", "jailed_code"]


def cleanup(user, tmp_dir):
    """Remove what the run left in its ``tmp/`` (sudoers: CODEJAIL_CLEANUP)."""
    return ["sudo", "-n", "-u", user, "/usr/bin/find", tmp_dir, *CLEANUP_ARGS]


def kill_own(user):
    """SIGKILL every process of ``user``, whatever its process group (sudoers: CODEJAIL_KILL_OWN)."""
    return ["sudo", "-n", "-u", user, "/usr/bin/kill", "-9", "-1"]


def kill_groups(user, groups):
    """
    SIGKILL the process groups ``groups`` (of the runs of ``user``), only ``user``'s processes in
    them (sudoers: CODEJAIL_KILL_GROUPS).
    """
    return ["sudo", "-n", "-u", user, "/usr/bin/kill", "-9", "--", *(f"-{group}" for group in groups)]


def zygote(user, python, script):
    """Start ``user``'s zygote (sudoers: CODEJAIL_ZYGOTE); ``-S``: its script sets up ``site``."""
    return ["sudo", "-n", "-u", user, python, "-E", "-B", "-S", script]
