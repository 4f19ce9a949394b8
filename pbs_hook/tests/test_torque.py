"""The Torque / classic PBS prologue and epilogue, called with the mom's real arguments."""

import atexit
import os
import shutil
import stat
import subprocess
import tempfile
import time
import unittest

from helpers import FAKE_MSRSAVE, PBS_HOOK, NodeTestCase, needs_msrsave

# One script, installed under the names the mom runs (it acts by its name): copies as an admin
# installs them.
SCRIPT = os.path.join(PBS_HOOK, "torque", "msr-restore-job")
MOM_PRIV = tempfile.mkdtemp(prefix="msr-restore-mom-priv-")
atexit.register(shutil.rmtree, MOM_PRIV, True)


def installed(name):
    path = os.path.join(MOM_PRIV, name)
    shutil.copyfile(SCRIPT, path)
    os.chmod(path, 0o500)
    return path


PROLOGUE = installed("prologue")
EPILOGUE = installed("epilogue")


def prologue_args(job_id, torque=False):
    # PBS: jobid user group.  Torque: jobid user group jobname resource_limits queue account
    # (and the job script in Torque 4+)
    args = [job_id, "alice", "users"]
    if torque:
        args += ["myjob", "nodes=1:ppn=4,walltime=01:00:00", "batch", "proj42",
                 "/var/spool/torque/mom_priv/jobs/%s.SC" % job_id]
    return args


def epilogue_args(job_id, exit_code="0"):
    # jobid user group jobname session_id resource_limits resources_used queue account exit_code
    return [job_id, "alice", "users", "myjob", "12345",
            "ncpus=4,walltime=01:00:00", "cput=00:00:01,mem=1024kb,walltime=00:00:05",
            "workq", "proj42", exit_code]


class ScriptTestCase(NodeTestCase):
    def setUp(self):
        NodeTestCase.setUp(self)
        self.offline_log = os.path.join(self.tmp, "pbsnodes.log")
        self.pbsnodes = os.path.join(self.tmp, "pbsnodes")
        with open(self.pbsnodes, "w") as f:
            f.write('#!/bin/sh\nfor a in "$@"; do printf "%%s\\n" "$a"; done > %s\n'
                    % self.offline_log)
        os.chmod(self.pbsnodes, 0o755)
        # The mom's job files (mom_priv/jobs/ID.JB): the jobs it holds (mom_holds()).
        self.mom_jobs = os.path.join(self.tmp, "mom_jobs")
        os.mkdir(self.mom_jobs)

    def mom_holds(self, *job_files):
        for name in job_files:
            open(os.path.join(self.mom_jobs, name + ".JB"), "w").close()

    def mom_drops(self, *job_files):
        for name in job_files:
            os.unlink(os.path.join(self.mom_jobs, name + ".JB"))

    def conf(self, **settings):
        values = {"MSRSAVE": self.msrsave or FAKE_MSRSAVE, "ROOT": self.root,
                  "STATE_DIR": self.state_dir, "TIMEOUT": "20",
                  "OFFLINE_CMD": "%s -o -N" % self.pbsnodes, "NODE_NAME": "node1",
                  "MOM_JOBS_DIR": self.mom_jobs}
        values.update(settings)
        path = os.path.join(self.tmp, "pbs-scripts.conf")
        with open(path, "w") as f:
            f.write("# msr-restore prologue/epilogue settings\n")
            for key, value in sorted(values.items()):
                f.write("%s=%s\n" % (key, value))
        os.chmod(path, 0o644)
        self.env["MSR_RESTORE_SCRIPTS_CONF"] = path
        return path

    def run_script(self, script, args, timeout=60):
        start = time.time()
        proc = subprocess.run([script] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=self.env, timeout=timeout,
                              cwd=self.tmp)
        proc.elapsed = time.time() - start
        return proc

    def offline_calls(self):
        if not os.path.exists(self.offline_log):
            return None
        with open(self.offline_log) as f:
            return f.read().splitlines()


@needs_msrsave
class TorqueCycleTests(ScriptTestCase):
    def setUp(self):
        ScriptTestCase.setUp(self)
        self.emulate()
        self.conf()

    def test_pbs_prologue_and_epilogue_restore(self):
        before = self.registers()
        p = self.run_script(PROLOGUE, prologue_args("11.pbs"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, b"", "a prologue's output ends up in the job's output")
        self.job_changes_registers()
        self.assertNotEqual(self.registers(), before)
        p = self.run_script(EPILOGUE, epilogue_args("11.pbs"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.registers(), before)
        self.assertIsNone(self.offline_calls())

    def test_a_job_the_mom_forgot_is_ended_by_the_next_prologue(self):
        """The mom died while job 40 ran and its epilogue never ran: the next job's prologue
        finds 40 registered but not among the mom's job files, ends it (the node is restored,
        40 was the last) and takes a fresh snapshot."""
        self.env["MSR_RESTORE_VERBOSE"] = "1"
        before = self.registers()
        self.mom_holds("40.pbs")
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("40.pbs")).returncode, 0)
        self.job_changes_registers()
        self.mom_drops("40.pbs")
        self.age_registration("40.pbs", 300)  # past msrsave's grace for a job just begun

        self.mom_holds("41.pbs")
        p = self.run_script(PROLOGUE, prologue_args("41.pbs"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"the mom no longer runs these jobs, ended: job 40.pbs", p.stderr)
        self.assertEqual(self.registered(), ["41.pbs"])
        self.assertEqual(self.registers(), before)
        p = self.run_script(EPILOGUE, epilogue_args("41.pbs"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.registered(), [])

    def test_jobs_the_mom_holds_are_kept(self):
        """A job whose file the mom has (by its full id, or cut to 11 characters as Torque may
        name it) is never ended, however old; nor is one just begun without a file."""
        self.mom_holds("50.pbs", "1234567.ser")
        for job in ("50.pbs", "1234567.server.example"):
            self.assertEqual(self.run_script(PROLOGUE, prologue_args(job)).returncode, 0)
            self.age_registration(job, 300)
        self.env["MSR_RESTORE_VERBOSE"] = "1"
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("1234567.server.example"))
                         .returncode, 0)
        # job 51: begun here just now, its file not (yet) there: within msrsave's grace
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("51.pbs")).returncode, 0)
        self.mom_holds("52.pbs")
        p = self.run_script(EPILOGUE, epilogue_args("52.pbs"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn(b"ended:", p.stderr)
        self.assertEqual(self.registered(), ["1234567.server.example", "50.pbs", "51.pbs"])

    def test_without_the_moms_job_files_nothing_is_ended(self):
        """No readable job directory, or none with this job's file: the mom cannot be asked,
        so a stale registration stays (and the script says why)."""
        self.mom_holds("60.pbs")
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("60.pbs")).returncode, 0)
        self.mom_drops("60.pbs")
        self.age_registration("60.pbs", 300)
        self.env["MSR_RESTORE_VERBOSE"] = "1"
        p = self.run_script(PROLOGUE, prologue_args("61.pbs"))  # no file of 61 either
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"has no file of job 61.pbs", p.stderr)
        self.conf(MOM_JOBS_DIR=os.path.join(self.tmp, "no-such-dir"))
        p = self.run_script(EPILOGUE, epilogue_args("61.pbs"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"cannot read the mom's job directory", p.stderr)
        self.assertEqual(self.registered(), ["60.pbs"])

    def test_torque_arguments_and_failed_job(self):
        before = self.registers()
        p = self.run_script(PROLOGUE, prologue_args("12.torque", torque=True))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.job_changes_registers()
        # the job failed (exit 137); Torque 4+ adds the job script as an 11th argument
        p = self.run_script(EPILOGUE, epilogue_args("12.torque", "137") + ["/tmp/12.torque.SC"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.registers(), before)

    def test_prologue_failure_carries_msrsaves_message_whole(self):
        """msrsave refuses the job id; its --format shell line quotes the message, quotes
        inside it included, and the message reaches stderr and OFFLINE_CMD whole."""
        p = self.run_script(PROLOGUE, prologue_args("bad'id"))
        self.assertEqual(p.returncode, 2, p.stderr)
        why = "cannot snapshot MSRs for job bad'id: job id \"bad'id\" is not usable as a file name"
        self.assertIn(why.encode(), p.stderr)
        self.assertTrue(self.offline_calls()[2].startswith("msr-restore: " + why),
                        self.offline_calls())

    def test_prologue_refused_msr_restore_conf_requeues_with_its_line(self):
        """msrsave reads msr-restore.conf itself ($MSR_RESTORE_CONFIG here); a line it refuses
        fails the begin, and its message names the file and line."""
        with open(self.msr_restore_conf, "w") as f:
            f.write("backend = auto\non_drift = offline\n")
        p = self.run_script(PROLOGUE, prologue_args("16.pbs"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(('%s:2: on_drift: "offline" is not drain or log'
                       % self.msr_restore_conf).encode(), p.stderr)
        self.assertIn("%s:2" % self.msr_restore_conf, self.offline_calls()[2])

    def test_bad_state_dir_setting_is_msrsaves_to_refuse(self):
        self.conf(STATE_DIR="relative/state")
        p = self.run_script(PROLOGUE, prologue_args("17.pbs"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"bad argument 'state_dir=relative/state' in --set: state_dir: the path "
                      b"must be absolute", p.stderr)

    def test_epilogue_real_restore_failure_offlines_with_msrsaves_words(self):
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("18.pbs")).returncode, 0)
        self.job_changes_registers()
        os.rename(self.reg_file(3), self.reg_file(3) + ".gone")
        p = self.run_script(EPILOGUE, epilogue_args("18.pbs"))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("MSR restore failed after job 18.pbs: restore incomplete at the end of "
                      "job 18.pbs", self.offline_calls()[2])
        self.assertIn("CPU 3 MSR 0x00000199 (IA32_PERF_CTL)", self.offline_calls()[2])

    def test_epilogue_without_prologue(self):
        p = self.run_script(EPILOGUE, epilogue_args("13.pbs", "-11"))
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.run_script(EPILOGUE, epilogue_args("13.pbs"))  # twice: still fine
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_parallel_scripts_on_a_shared_node(self):
        """Torque runs prologue.parallel / epilogue.parallel on sisters: the same scripts."""
        before = self.registers()
        for job in ("14.torque", "15.torque"):
            self.assertEqual(self.run_script(PROLOGUE, prologue_args(job)).returncode, 0)
        self.job_changes_registers()
        changed = self.registers()
        self.assertEqual(self.run_script(EPILOGUE, epilogue_args("14.torque")).returncode, 0)
        self.assertEqual(self.registers(), changed)
        self.assertEqual(self.run_script(EPILOGUE, epilogue_args("15.torque")).returncode, 0)
        self.assertEqual(self.registers(), before)


class TorqueFailureTests(ScriptTestCase):
    def test_prologue_msrsave_missing_requeues_and_offlines(self):
        self.conf(MSRSAVE=os.path.join(self.tmp, "no-msrsave"))
        p = self.run_script(PROLOGUE, prologue_args("21.pbs"))
        self.assertEqual(p.returncode, 2, "other non-zero = requeue")
        self.assertIn(b"cannot snapshot MSRs for job 21.pbs", p.stderr)
        calls = self.offline_calls()
        self.assertEqual(calls[:2], ["-o", "-N"])
        self.assertTrue(calls[2].startswith("msr-restore: cannot snapshot MSRs for job 21.pbs"))
        self.assertEqual(calls[3], "node1")

    def test_prologue_failure_policies(self):
        self.conf(MSRSAVE=os.path.join(self.tmp, "no-msrsave"), ON_FAILURE="abort")
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("22.pbs")).returncode, 1)
        self.conf(MSRSAVE=os.path.join(self.tmp, "no-msrsave"), ON_FAILURE="run",
                  OFFLINE_CMD="")
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("23.pbs")).returncode, 0)
        self.conf(MSRSAVE=os.path.join(self.tmp, "no-msrsave"), ON_FAILURE="bogus")
        p = self.run_script(PROLOGUE, prologue_args("24.pbs"))
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"ON_FAILURE must be requeue, abort or run", p.stderr)

    def test_prologue_timeout(self):
        self.conf(MSRSAVE=FAKE_MSRSAVE, TIMEOUT="2")
        self.env["FAKE_MSRSAVE_MODE"] = "sleep"
        p = self.run_script(PROLOGUE, prologue_args("25.pbs"))
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"timed out after 2s", p.stderr)
        self.assertLess(p.elapsed, 15)

    def test_epilogue_restore_failure_offlines(self):
        self.conf(MSRSAVE=FAKE_MSRSAVE)
        self.env["FAKE_MSRSAVE_MODE"] = "fail"
        p = self.run_script(EPILOGUE, epilogue_args("26.pbs"))
        self.assertEqual(p.returncode, 1)
        calls = self.offline_calls()
        self.assertIn("MSR restore failed after job 26.pbs: restore incomplete at the end of "
                      "job 26.pbs: 2 register(s) not restored", calls[2])

    def test_output_without_a_result_line_fails(self):
        """msrsave exits 0 but prints no --format shell line: not taken for a success."""
        self.conf(MSRSAVE=FAKE_MSRSAVE)
        self.env["FAKE_MSRSAVE_MODE"] = "badjson"
        p = self.run_script(PROLOGUE, prologue_args("31.pbs"))
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"msrsave exit 0 without a result: msrsave: this is not JSON", p.stderr)

    def test_epilogue_timeout_offlines(self):
        self.conf(MSRSAVE=FAKE_MSRSAVE, TIMEOUT="1")
        self.env["FAKE_MSRSAVE_MODE"] = "sleep"
        p = self.run_script(EPILOGUE, epilogue_args("27.pbs"))
        self.assertEqual(p.returncode, 1)
        self.assertIn("timed out", self.offline_calls()[2])

    def test_arguments_passed_to_msrsave(self):
        self.conf(MSRSAVE=FAKE_MSRSAVE)
        self.env["FAKE_MSRSAVE_MODE"] = "ok"
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("28.pbs")).returncode, 0)
        self.assertEqual(self.run_script(EPILOGUE, epilogue_args("28.pbs")).returncode, 0)
        sets = ["--format", "shell", "--set", "root=" + self.root,
                "--set", "state_dir=" + self.state_dir]
        self.assertEqual(self.fake_calls(), [sets + ["job", "begin", "28.pbs"],
                                             sets + ["job", "end", "28.pbs"]])

    def test_full_job_file_names_go_to_msrsave_in_one_call(self):
        """The mom's job files named by full ids are passed as they are: one msrsave call."""
        self.conf(MSRSAVE=FAKE_MSRSAVE)
        self.env["FAKE_MSRSAVE_MODE"] = "ok"
        self.mom_holds("34.pbs", "35.pbs")
        self.assertEqual(self.run_script(PROLOGUE, prologue_args("34.pbs")).returncode, 0)
        sets = ["--format", "shell", "--set", "root=" + self.root,
                "--set", "state_dir=" + self.state_dir]
        self.assertEqual(self.fake_calls(), [sets + ["job", "begin", "34.pbs",
                                                     "--running-jobs=34.pbs,35.pbs"]])

    def test_no_job_id_is_a_usage_error(self):
        self.conf(MSRSAVE=FAKE_MSRSAVE)
        self.assertEqual(self.run_script(PROLOGUE, []).returncode, 1)
        self.assertEqual(self.run_script(EPILOGUE, []).returncode, 1)
        self.assertEqual(self.fake_calls(), [])

    def test_group_writable_conf_is_ignored(self):
        path = self.conf(MSRSAVE=FAKE_MSRSAVE)
        os.chmod(path, 0o666)
        p = self.run_script(PROLOGUE, prologue_args("29.pbs"))
        self.assertIn(b"ignored: it must be owned by root", p.stderr)
        # falls back to /usr/bin/msrsave, which is not installed here: requeue
        if not os.path.exists("/usr/bin/msrsave"):
            self.assertEqual(p.returncode, 2)

    def test_unknown_conf_key_is_reported(self):
        self.conf(MSRSAVE=FAKE_MSRSAVE, MSRSAV="/typo")
        self.env["FAKE_MSRSAVE_MODE"] = "ok"
        p = self.run_script(PROLOGUE, prologue_args("30.pbs"))
        self.assertEqual(p.returncode, 0)
        self.assertIn(b"unknown setting ignored: MSRSAV=/typo", p.stderr)

    def test_conf_lines_with_spaces_quotes_and_comments(self):
        """KEY = "VALUE"  # comment: the value is taken whole, inner spaces kept."""
        path = self.conf()
        with open(path, "w") as f:
            f.write('  MSRSAVE = "%s"   # the fake\n\tTIMEOUT\t=\t20\n'
                    'OFFLINE_CMD = "%s -o -N"\nNODE_NAME= node9 \nMOM_JOBS_DIR=%s\n'
                    % (FAKE_MSRSAVE, self.pbsnodes, self.mom_jobs))
        self.env["FAKE_MSRSAVE_MODE"] = "fail"
        p = self.run_script(PROLOGUE, prologue_args("31.pbs"))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertNotIn(b"unknown setting", p.stderr)
        calls = self.offline_calls()
        self.assertEqual(calls[0:1], ["-o"], calls)
        self.assertEqual(calls[-1], "node9", calls)
        self.assertEqual(len(self.fake_calls()), 1)

    def test_the_script_acts_by_its_name(self):
        """Torque's sister names run the same code; any other name is refused, nothing run."""
        self.conf(MSRSAVE=FAKE_MSRSAVE)
        self.env["FAKE_MSRSAVE_MODE"] = "ok"
        self.assertEqual(self.run_script(installed("prologue.parallel"),
                                         prologue_args("32.pbs")).returncode, 0)
        self.assertEqual(self.run_script(installed("epilogue.parallel"),
                                         epilogue_args("32.pbs")).returncode, 0)
        self.assertEqual([c[-2:] for c in self.fake_calls()],
                         [["begin", "32.pbs"], ["end", "32.pbs"]])
        p = self.run_script(SCRIPT, prologue_args("33.pbs"))
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"install this script as mom_priv/prologue and mom_priv/epilogue", p.stderr)
        self.assertEqual(len(self.fake_calls()), 2)

    def test_scripts_are_executable_sh(self):
        mode = os.stat(SCRIPT).st_mode
        self.assertTrue(mode & stat.S_IXUSR, SCRIPT)
        with open(SCRIPT) as f:
            self.assertEqual(f.readline().strip(), "#!/bin/sh")
        subprocess.check_call(["sh", "-n", SCRIPT])


if __name__ == "__main__":
    unittest.main()
