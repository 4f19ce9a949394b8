"""The fake msrsave follows the real one: for each command the hook and the Torque scripts run,
the fake prints the same shape (the schema-1 envelope, the same fields with the same JSON types,
the same --format shell keys) and exits with the same status as the real msrsave on an emulated
node in the same situation."""

import json
import os
import shlex
import subprocess

from helpers import FAKE_MSRSAVE, NodeTestCase, needs_msrsave


def shape(value):
    """The JSON shape of a value: field names and types, not the values."""
    if isinstance(value, dict):
        return dict((k, shape(v)) for k, v in value.items())
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def shell_keys(line):
    """The key names of a --format shell line (key='value' pairs, quoted for a shell), in
    order."""
    return [token.split("=", 1)[0] for token in shlex.split(line)]


@needs_msrsave
class FakeFollowsRealTests(NodeTestCase):
    def setUp(self):
        NodeTestCase.setUp(self)
        self.emulate()
        os.makedirs(os.path.dirname(self.baseline))

    def run_both(self, args, mode="ok", fmt="json", real_setup=None):
        """(real, fake) as (exit status, stdout) for the same arguments."""
        sets = ["--set", "root=" + self.root, "--set", "state_dir=" + self.state_dir]
        results = []
        for binary in (self.msrsave, FAKE_MSRSAVE):
            env = dict(self.env, FAKE_MSRSAVE_MODE=mode)
            if binary == self.msrsave and real_setup:
                real_setup()
            p = subprocess.run([binary, "--format", fmt] + sets + list(args),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               timeout=60)
            results.append((p.returncode, p.stdout.decode()))
        return results

    def assertSameShape(self, args, mode="ok", real_setup=None):
        (rc_real, out_real), (rc_fake, out_fake) = self.run_both(args, mode,
                                                                 real_setup=real_setup)
        real, fake = json.loads(out_real), json.loads(out_fake)
        self.assertEqual(rc_fake, rc_real, "exit status of %s\nreal %s\nfake %s"
                         % (args, out_real, out_fake))
        self.assertEqual(shape(fake), shape(real), "shape of %s\nreal %s\nfake %s"
                         % (args, out_real, out_fake))
        self.assertEqual(fake["schema"], 1)
        return real, fake

    def assertSameShellKeys(self, args, mode="ok", real_setup=None):
        (rc_real, out_real), (rc_fake, out_fake) = self.run_both(args, mode, "shell",
                                                                 real_setup=real_setup)
        self.assertEqual(rc_fake, rc_real, (out_real, out_fake))
        self.assertEqual(shell_keys(out_fake), shell_keys(out_real), (out_real, out_fake))

    def test_job_commands(self):
        # an idle node (what the fake's ok mode describes), then a first job
        self.assertSameShape(["job", "status"])
        self.assertSameShape(["job", "reconcile", "--running-jobs="])
        self.assertSameShape(["job", "reconcile"])  # without the list: an error
        self.assertSameShape(["job", "end", "2.pbs"])  # not registered
        self.assertSameShape(["job", "begin", "1.pbs"])
        for args in (["job", "begin", "3.pbs"], ["job", "end", "4.pbs"], ["job", "status"],
                     ["job", "reconcile", "--running-jobs=5.pbs"]):
            self.assertSameShellKeys(args)

    def test_config_commands(self):
        real, fake = self.assertSameShape(["config", "show"])
        self.assertEqual(list(fake["config"]), list(real["config"]))
        self.assertEqual(fake["config"]["state_dir"], real["config"]["state_dir"])
        self.assertSameShape(["config", "get", "baseline"])
        self.assertSameShape(["config", "get", "no_such_key"])
        self.assertSameShape(["--set", "on_drift=offline", "config", "show"])
        self.assertSameShape(["--set", "bogus=1", "job", "begin", "6.pbs"])
        (_, real), (_, fake) = self.run_both(["--set", "bogus=1", "config", "show"])
        self.assertEqual(json.loads(fake)["error"], json.loads(real)["error"])
        self.assertSameShellKeys(["config", "show"])
        self.assertSameShellKeys(["config", "get", "on_drift"])

    def test_check_and_save(self):
        self.assertSameShape(["save", self.baseline])
        self.assertSameShape(["check", self.baseline])
        self.assertSameShellKeys(["check", self.baseline])

    def test_restore_failure_at_job_end(self):
        """fail mode: the last job's restore fails on a register (a CPU's file gone)."""
        def failing_restore():
            subprocess.run([self.msrsave, "--set", "root=" + self.root, "--set",
                            "state_dir=" + self.state_dir, "job", "begin", "7.pbs"],
                           stdout=subprocess.PIPE, check=True, env=self.env)
            os.rename(self.reg_file(3), self.reg_file(3) + ".gone")
        real, fake = self.assertSameShape(["job", "end", "7.pbs"], "fail", failing_restore)
        self.assertTrue(real["error"].startswith("restore incomplete at the end of job 7.pbs"))
        self.assertTrue(fake["error"].startswith("restore incomplete at the end of job 7.pbs"))

    def test_error_mode_is_a_state_dir_that_is_a_file(self):
        def plant():
            with open(self.state_dir, "w") as f:
                f.write("not a directory\n")
        (_, real), (_, fake) = self.run_both(["job", "begin", "8.pbs"], "error",
                                             real_setup=plant)
        self.assertEqual(json.loads(fake), json.loads(real))
