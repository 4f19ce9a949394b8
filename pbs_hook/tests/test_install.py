"""install.sh / uninstall.sh against a fake qmgr that refuses what OpenPBS refuses."""

import ast
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from helpers import HOOK, PBS_HOOK, TESTS, msrsave_path, needs_msrsave

INSTALL = os.path.join(PBS_HOOK, "install.sh")
UNINSTALL = os.path.join(PBS_HOOK, "uninstall.sh")
CONFIG = os.path.join(PBS_HOOK, "msr_restore_hook.json")


@needs_msrsave
class InstallTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="msr-restore-qmgr-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        # install.sh has msrsave check the config's msr-restore keys: the real msrsave, with an
        # empty msr-restore.conf
        conf = os.path.join(self.tmp, "msr-restore.conf")
        open(conf, "w").close()
        self.env = dict(os.environ, QMGR=os.path.join(TESTS, "fake_qmgr"),
                        FAKE_QMGR_DIR=self.tmp, MSR_RESTORE_CONFIG=conf)

    def run_sh(self, script, *args, **kw):
        """The script; install.sh with --msrsave (the shipped config's /usr/bin/msrsave is not
        installed here) unless msrsave=None."""
        args = list(args)
        msrsave = kw.get("msrsave", msrsave_path())
        if script == INSTALL and msrsave:
            args += ["--msrsave", msrsave]
        return subprocess.run([script] + args, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=self.env, timeout=60)

    def hooks(self):
        path = os.path.join(self.tmp, "hooks.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def commands(self):
        with open(os.path.join(self.tmp, "log")) as f:
            return f.read().splitlines()

    def test_install_creates_three_hooks(self):
        p = self.run_sh(INSTALL)
        self.assertEqual(p.returncode, 0, p.stderr)
        hooks = self.hooks()
        self.assertEqual(sorted(hooks), ["msr_restore_begin", "msr_restore_check",
                                         "msr_restore_end"])
        begin, end, check = (hooks["msr_restore_begin"], hooks["msr_restore_end"],
                             hooks["msr_restore_check"])
        self.assertEqual(begin["event"], "execjob_prologue,exechost_startup")
        self.assertEqual(begin["fail_action"], "offline_vnodes")
        self.assertEqual(end["event"], "execjob_epilogue,execjob_end")
        self.assertEqual(end["fail_action"], "none")
        self.assertEqual(check["event"], "exechost_periodic")
        self.assertEqual(check["freq"], "120")
        for h in hooks.values():
            self.assertEqual(h["alarm"], "30")
            self.assertEqual(h["application/x-python"], HOOK)
            self.assertEqual(h["application/x-config"], CONFIG)
            self.assertEqual(h["enabled"], "true")
        # event is set before fail_action (PBS checks fail_action against the events)
        cmds = self.commands()
        self.assertLess(cmds.index("set hook msr_restore_begin event = "
                                   "'execjob_prologue,exechost_startup'"),
                        cmds.index("set hook msr_restore_begin fail_action = offline_vnodes"))

    def test_install_twice_updates(self):
        self.assertEqual(self.run_sh(INSTALL).returncode, 0)
        p = self.run_sh(INSTALL, "--with-execjob-begin")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"exists: updating it", p.stdout)
        self.assertEqual(self.hooks()["msr_restore_begin"]["event"],
                         "execjob_begin,execjob_prologue,exechost_startup")

    def resources(self):
        path = os.path.join(self.tmp, "resources.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def test_install_creates_the_job_record_resource_once(self):
        """resources_used.msr_changed needs a string resource on the server; a second install
        (or one on a server that has it) leaves it, and one of another type is left alone."""
        self.assertEqual(self.run_sh(INSTALL).returncode, 0)
        self.assertEqual(self.resources(), {"msr_changed": "string"})
        # the name the hook sets
        with open(HOOK) as f:
            hook_resource = [ast.literal_eval(line.split("=", 1)[1].strip()) for line in f
                             if line.startswith("JOB_RESOURCE = ")]
        self.assertEqual(hook_resource, ["msr_changed"])
        self.assertIn("create resource msr_changed type=string", self.commands())
        p = self.run_sh(INSTALL)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"resource msr_changed exists", p.stdout)
        self.assertEqual(self.commands().count("create resource msr_changed type=string"), 1)

        with open(os.path.join(self.tmp, "resources.json"), "w") as f:
            json.dump({"msr_changed": "long"}, f)
        p = self.run_sh(INSTALL)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"resource msr_changed exists and is not a string", p.stderr)
        self.assertEqual(self.resources(), {"msr_changed": "long"})

        p = self.run_sh(UNINSTALL)
        self.assertIn(b"resource msr_changed left defined", p.stdout)
        self.assertEqual(self.resources(), {"msr_changed": "long"})

    def test_alarm_and_freq_come_from_the_config(self):
        cfg = os.path.join(self.tmp, "site.json")
        with open(cfg, "w") as f:
            json.dump({"alarm": 60, "timeout": 45, "check_freq": 300}, f)
        p = self.run_sh(INSTALL, "--config", cfg, "--prefix", "site_msr")
        self.assertEqual(p.returncode, 0, p.stderr)
        hooks = self.hooks()
        self.assertEqual(hooks["site_msr_check"]["freq"], "300")
        self.assertEqual(hooks["site_msr_begin"]["alarm"], "60")
        self.assertEqual(hooks["site_msr_begin"]["application/x-config"], cfg)

    def test_bad_config_stops_the_install(self):
        cfg = os.path.join(self.tmp, "bad.json")
        with open(cfg, "w") as f:
            f.write('{"timeout": 40, "alarm": 30}')
        p = self.run_sh(INSTALL, "--config", cfg)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"has errors", p.stderr)
        self.assertEqual(self.hooks(), {})

    def test_config_msrsave_refuses_stops_the_install(self):
        cfg = os.path.join(self.tmp, "bad-shared.json")
        with open(cfg, "w") as f:
            json.dump({"on_drift": "offline"}, f)
        p = self.run_sh(INSTALL, "--config", cfg)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b'on_drift: "offline" is not drain or log', p.stderr)
        self.assertIn(b"has errors", p.stderr)
        self.assertEqual(self.hooks(), {})

    def test_install_without_msrsave_says_so(self):
        if os.path.exists("/usr/bin/msrsave"):
            self.skipTest("/usr/bin/msrsave is installed on this host")
        p = self.run_sh(INSTALL, msrsave=None)  # the shipped config's /usr/bin/msrsave
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"msrsave /usr/bin/msrsave is not there", p.stderr)
        self.assertIn(b"--msrsave PATH", p.stderr)
        self.assertEqual(self.hooks(), {})

    def test_uninstall(self):
        self.assertEqual(self.run_sh(INSTALL).returncode, 0)
        p = self.run_sh(UNINSTALL)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.hooks(), {})
        self.assertIn(b"removed 3 hook(s)", p.stdout)
        p = self.run_sh(UNINSTALL)  # nothing left: still fine
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"is not installed", p.stdout)

    def state(self, name):
        path = os.path.join(self.tmp, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def test_install_starts_no_server_timer(self):
        """'freq' set on an enabled mom hook also starts a pbs_server timer for it (which
        'delete hook' leaves behind): install.sh sets freq while the hook is disabled."""
        self.assertEqual(self.run_sh(INSTALL).returncode, 0)
        self.assertEqual(self.state("timers.json"), {})
        self.assertEqual(self.run_sh(INSTALL).returncode, 0)  # and when updating
        self.assertEqual(self.state("timers.json"), {})

    def test_uninstall_leaves_no_timer_behind(self):
        """Hooks installed another way (e.g. an earlier install.sh: create, then freq while
        enabled) have a server timer; uninstall.sh deletes them without leaving it behind."""
        q = os.path.join(TESTS, "fake_qmgr")
        for cmd in ("create hook msr_restore_check",
                    "set hook msr_restore_check event = exechost_periodic",
                    "set hook msr_restore_check freq = 120"):
            subprocess.run([q, "-c", cmd], env=self.env, check=True)
        self.assertEqual(sorted(self.state("timers.json")), ["msr_restore_check"])
        p = self.run_sh(UNINSTALL)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.hooks(), {})
        self.assertEqual(self.state("dangling_timers.json"), [])

    def test_install_right_after_uninstall(self):
        """uninstall.sh deletes the hooks at once (no "pending delete" while the moms drop
        them): install.sh right after it does not have to wait."""
        self.env["FAKE_QMGR_PENDING_DELETE"] = "3600"
        self.assertEqual(self.run_sh(INSTALL).returncode, 0)
        self.assertEqual(self.run_sh(UNINSTALL).returncode, 0)
        p = self.run_sh(INSTALL)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn(b"pending delete", p.stdout)
        self.assertEqual(sorted(self.hooks()), ["msr_restore_begin", "msr_restore_check",
                                                "msr_restore_end"])

    def test_install_waits_for_names_pending_delete(self):
        """Hooks deleted with qmgr itself stay "pending delete" until every mom dropped them:
        install.sh waits for the names instead of stopping halfway."""
        self.env["FAKE_QMGR_PENDING_DELETE"] = "2"
        self.assertEqual(self.run_sh(INSTALL).returncode, 0)
        q = os.path.join(TESTS, "fake_qmgr")
        for name in ("msr_restore_begin", "msr_restore_end", "msr_restore_check"):
            subprocess.run([q, "-c", "delete hook %s" % name], env=self.env, check=True)
        p = self.run_sh(INSTALL)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"pending delete", p.stdout)
        hooks = self.hooks()
        self.assertEqual(sorted(hooks), ["msr_restore_begin", "msr_restore_check",
                                         "msr_restore_end"])
        for h in hooks.values():
            self.assertEqual(h["enabled"], "true")
            self.assertEqual(h["application/x-python"], HOOK)
        self.assertEqual(hooks["msr_restore_check"]["freq"], "120")

    def test_names_stuck_pending_delete_leave_no_half_installed_hook(self):
        """A mom that is down keeps a name pending delete: install.sh gives up after
        MSR_RESTORE_QMGR_WAIT seconds, says why, and no hook has events or is enabled; once the
        name is free, running it again completes."""
        self.env["FAKE_QMGR_PENDING_DELETE"] = "3600"
        q = os.path.join(TESTS, "fake_qmgr")
        for cmd in ("create hook msr_restore_check",
                    "set hook msr_restore_check event = exechost_periodic",
                    "delete hook msr_restore_check"):
            subprocess.run([q, "-c", cmd], env=self.env, check=True)
        self.env["MSR_RESTORE_QMGR_WAIT"] = "2"
        p = self.run_sh(INSTALL)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"msr_restore_check is still pending delete after 2s", p.stderr)
        self.assertIn(b"pbsnodes -l", p.stderr)
        self.assertEqual(sorted(self.hooks()), ["msr_restore_begin", "msr_restore_end"])
        for name, h in self.hooks().items():
            self.assertEqual(h["event"], "", name)
            self.assertEqual(h["enabled"], "false", name)
        with open(os.path.join(self.tmp, "pending_delete.json"), "w") as f:
            json.dump({}, f)
        p = self.run_sh(INSTALL)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(sorted(self.hooks()), ["msr_restore_begin", "msr_restore_check",
                                                "msr_restore_end"])
        self.assertEqual(self.hooks()["msr_restore_end"]["event"], "execjob_epilogue,execjob_end")

    def test_dry_run_changes_nothing(self):
        p = self.run_sh(INSTALL, "--dry-run")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"fail_action = offline_vnodes", p.stdout)
        self.assertEqual(self.hooks(), {})

    def test_shell_scripts_pass_shellcheck(self):
        if shutil.which("shellcheck") is None:
            self.skipTest("shellcheck is not installed")
        scripts = [INSTALL, UNINSTALL, os.path.join(TESTS, "run.sh"),
                   os.path.join(PBS_HOOK, "torque", "msr-restore-job")]
        p = subprocess.run(["shellcheck", "-s", "sh"] + scripts, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        p = subprocess.run(["shellcheck", os.path.join(TESTS, "live", "run.sh")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(p.returncode, 0, p.stdout.decode())

    def test_live_suite_says_not_run_without_a_pbs(self):
        env = dict(os.environ)
        env.pop("PBS_EXEC", None)
        p = subprocess.run([os.path.join(TESTS, "live", "run.sh")], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=60)
        self.assertEqual(p.returncode, 77, p.stderr)
        lines = p.stdout.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("NOT RUN pbs_live: set PBS_EXEC"), lines)


if __name__ == "__main__":
    unittest.main()
