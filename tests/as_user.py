"""The job as another user than root, for tests that need permissions to bite (root reads
and lists everything): started as root, it imports the package and TensorFlow (the
interpreter may live where only root can read), drops to `nobody` (uid and gid 65534, no
groups), then runs the command line.

    python tests/as_user.py HOME_DIR [estimator-vgg arguments ...]

Exit 77 with `cannot drop privileges: errno N (...)` on stderr when the system refuses (no
CAP_SETUID, a user namespace without that uid): the caller skips, saying so.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import estimator_vgg.cli  # noqa: E402
import estimator_vgg.runner  # noqa: E402,F401  (TensorFlow and the job, imported as root)

NOBODY = 65534

if __name__ == "__main__":
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    except OSError as e:
        print(f"cannot drop privileges: errno {e.errno} ({e.strerror})", file=sys.stderr)
        sys.exit(77)
    os.environ["HOME"] = sys.argv[1]
    sys.exit(estimator_vgg.cli.main(sys.argv[2:]))
