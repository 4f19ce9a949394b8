"""The PBS hook under the stand-in `pbs` module: the success paths on an emulated node with the
real msrsave, the failure paths with the real msrsave where it can fail for real, and with a fake
msrsave for what cannot be produced otherwise (a hang, garbage output)."""

import ast
import json
import os
import subprocess
import sys
import unittest

from helpers import (ALLOWLIST, CPUS, FAKE_MSRSAVE, HOOK, LOG_DEBUG, LOG_ERROR, LOG_WARNING,
                     ND_FREE, ND_OFFLINE, PERF_CTL, NodeTestCase, needs_msrsave)


@needs_msrsave
class JobCycleTests(NodeTestCase):
    """Prologue / epilogue / end with the real msrsave on an emulated node."""

    def setUp(self):
        NodeTestCase.setUp(self)
        self.emulate()
        self.cfg = self.config()

    def test_prologue_then_epilogue_restores_changed_registers(self):
        before = self.registers()
        res = self.run_hook("execjob_prologue", "101.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertEqual(self.registered(), ["101.pbs"])

        self.job_changes_registers()
        self.assertNotEqual(self.registers(), before)

        res = self.run_hook("execjob_epilogue", "101.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertEqual(self.registers(), before)
        self.assertIn("MSRs restored", res.log_text(LOG_DEBUG))
        self.assertEqual(res.log_text(LOG_ERROR), "")
        self.assertIsNone(self.marker())

    def test_end_after_epilogue_is_idempotent(self):
        before = self.registers()
        self.assertAccepted(self.run_hook("execjob_prologue", "102.pbs", self.cfg))
        self.job_changes_registers()
        self.assertAccepted(self.run_hook("execjob_epilogue", "102.pbs", self.cfg))
        self.assertEqual(self.registers(), before)

        res = self.run_hook("execjob_end", "102.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertEqual(self.registers(), before)
        self.assertEqual(res.log_text(LOG_ERROR), "")
        # and once more: a retried end hook changes nothing either
        res = self.run_hook("execjob_end", "102.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)

    def test_epilogue_after_rejected_prologue(self):
        """The prologue failed (msrsave could not run) and was rejected; PBS still runs the
        epilogue and end: they accept, with nothing to restore, and leave the vnode alone."""
        broken = self.config(msrsave=os.path.join(self.tmp, "no-such-msrsave"),
                             on_snapshot_failure="reject")
        res = self.run_hook("execjob_prologue", "103.pbs", broken)
        self.assertRejected(res)
        self.assertIn("cannot snapshot MSRs for job 103.pbs", res.reject_msg)
        self.assertUntouched(res)  # on_snapshot_failure = reject: no offline

        for event in ("execjob_epilogue", "execjob_end"):
            res = self.run_hook(event, "103.pbs", self.cfg)
            self.assertAccepted(res)
            self.assertUntouched(res)
            self.assertEqual(res.log_text(LOG_ERROR), "")

    def test_end_after_a_successful_epilogue_says_so(self):
        """execjob_end runs on every host after the epilogue: it must not report the job as
        "not registered (its begin failed or never ran)"."""
        self.assertAccepted(self.run_hook("execjob_prologue", "109.pbs", self.cfg))
        self.assertAccepted(self.run_hook("execjob_epilogue", "109.pbs", self.cfg))
        res = self.run_hook("execjob_end", "109.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertNotIn("not registered", res.log_text())
        self.assertIn("job 109.pbs: already ended by its epilogue on this host",
                      res.log_text(LOG_DEBUG))
        # a job whose begin really never ran here is still reported as such
        res = self.run_hook("execjob_end", "110.pbs", self.cfg)
        self.assertIn("not registered", res.log_text(LOG_DEBUG))

    def test_what_the_job_changed_goes_to_its_record(self):
        """The epilogue of the last job says per MSR what was changed (name, CPUs or packages,
        bits) in the job's log, and in resources_used.msr_changed where the server defines it."""
        self.define_resource("msr_changed", "string")
        self.assertAccepted(self.run_hook("execjob_prologue", "113.pbs", self.cfg))
        self.job_changes_registers()
        res = self.run_hook("execjob_epilogue", "113.pbs", self.cfg)
        self.assertAccepted(res)
        logs = [m for j, m in res.job_logs if j == "113.pbs"]
        self.assertEqual(len(logs), 1, repr(res.job_logs))
        self.assertIn("MSRs changed by the job(s) that held node1, put back: ", logs[0])
        self.assertIn("0x00000199 IA32_PERF_CTL on CPUs 0-3, bits 0x0000000000000a00", logs[0])
        self.assertIn("0x00000610 MSR_PKG_POWER_LIMIT on packages 0 (CPUs 0), bits "
                      "0x00000000000080ff", logs[0])
        record = res.job_resources_used.get("msr_changed")
        self.assertIsNotNone(record, repr(res.job_resources_used))
        self.assertNotIn(" ", record)  # one field of the accounting log's E record
        self.assertTrue(record.startswith("node1:"), record)
        self.assertIn("0x00000199/IA32_PERF_CTL/cpus=0-3/bits=0x0000000000000a00", record)
        self.assertIn("0x00000610/MSR_PKG_POWER_LIMIT/packages=0/bits=0x00000000000080ff",
                      record)

        # a job that changed nothing gets no record
        self.assertAccepted(self.run_hook("execjob_prologue", "114.pbs", self.cfg))
        res = self.run_hook("execjob_epilogue", "114.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertEqual(res.job_resources_used, {})
        self.assertEqual(res.job_logs, [])

    def test_what_the_job_changed_without_the_resource_is_in_its_log_only(self):
        """Without msr_changed defined on the server (install.sh not run, or an older one), the
        hook must not set it: the server would drop the job's whole resources_used."""
        self.assertAccepted(self.run_hook("execjob_prologue", "115.pbs", self.cfg))
        self.job_changes_registers()
        res = self.run_hook("execjob_epilogue", "115.pbs", self.cfg)  # apply_to_server checks
        self.assertAccepted(res)
        self.assertEqual(res.job_resources_used, {})
        self.assertIn("IA32_PERF_CTL", " ".join(m for _, m in res.job_logs))
        self.assertIn("resource msr_changed is not defined", res.log_text(LOG_DEBUG))

    def test_what_the_job_changed_from_its_end_is_in_its_log_only(self):
        """Ended by execjob_end (no epilogue ran here): resources_used set there never reaches
        the server, so only the job's log has it."""
        self.define_resource("msr_changed", "string")
        self.assertAccepted(self.run_hook("execjob_prologue", "116.pbs", self.cfg))
        self.job_changes_registers()
        res = self.run_hook("execjob_end", "116.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertEqual(res.job_resources_used, {})
        self.assertIn("IA32_PERF_CTL", " ".join(m for _, m in res.job_logs))

    def test_requeued_job_after_epilogue_is_ended_by_its_end(self):
        """An epilogue, then the job requeued and begun again here: its end restores."""
        before = self.registers()
        self.assertAccepted(self.run_hook("execjob_prologue", "111.pbs", self.cfg))
        self.assertAccepted(self.run_hook("execjob_epilogue", "111.pbs", self.cfg))
        self.assertAccepted(self.run_hook("execjob_prologue", "111.pbs", self.cfg))
        self.job_changes_registers()
        self.assertAccepted(self.run_hook("execjob_end", "111.pbs", self.cfg))
        self.assertEqual(self.registers(), before)

    def test_begin_failure_reason_stays_on_the_vnode(self):
        """The begin fails (the state dir cannot be made: a file is in its place), the vnode
        goes offline with that reason; the epilogue and end fail the same way: their reasons go
        to the logs, the vnode keeps the begin's."""
        with open(self.state_dir, "w") as f:
            f.write("not a directory\n")
        res = self.run_hook("execjob_prologue", "112.pbs", self.cfg)
        self.assertRejected(res)
        self.assertOffline(res, contains="cannot snapshot MSRs for job 112.pbs")
        begin_comment = res.vnodes[self.local]["comment"]
        self.assertServer(ND_OFFLINE, begin_comment)
        for event in ("execjob_epilogue", "execjob_end"):
            res = self.run_hook(event, "112.pbs", self.cfg)
            self.assertAccepted(res)
            self.assertUntouched(res)
            self.assertIn("MSR restore failed after job 112.pbs", res.log_text(LOG_ERROR))
            self.assertTrue(any("MSR restore failed" in m for _, m in res.job_logs), repr(res))
        self.assertServer(ND_OFFLINE, begin_comment)
        self.assertEqual(self.held(), [self.local])

    def test_qdel_of_queued_job_end_without_prologue(self):
        """qdel before the job ran anywhere: only execjob_end runs; nothing to restore."""
        before = self.registers()
        res = self.run_hook("execjob_end", "104.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertEqual(self.registers(), before)

    def test_qdel_of_running_job_on_sister_restores_in_end(self):
        """A killed job on a sister: prologue ran there, the epilogue does not, execjob_end
        restores. Only this host's vnodes are in play."""
        self.local = "node2"
        vnodes = ["node1", "node2"]
        before = self.registers()
        res = self.run_hook("execjob_prologue", "105.pbs", self.cfg, vnodes=vnodes,
                            in_ms_mom=False)
        self.assertAccepted(res)
        self.job_changes_registers()
        res = self.run_hook("execjob_end", "105.pbs", self.cfg, vnodes=vnodes, in_ms_mom=False)
        self.assertAccepted(res)
        self.assertEqual(self.registers(), before)
        self.assertUntouched(res, "node1")
        self.assertUntouched(res, "node2")

    def test_shared_node_restores_after_last_job(self):
        before = self.registers()
        self.assertAccepted(self.run_hook("execjob_prologue", "201.pbs", self.cfg))
        self.assertAccepted(self.run_hook("execjob_prologue", "202.pbs", self.cfg))
        self.job_changes_registers()
        changed = self.registers()
        self.assertAccepted(self.run_hook("execjob_epilogue", "201.pbs", self.cfg))
        self.assertEqual(self.registers(), changed, "restored while job 202 still runs")
        self.assertAccepted(self.run_hook("execjob_epilogue", "202.pbs", self.cfg))
        self.assertEqual(self.registers(), before)

    def test_execjob_begin_is_handled_like_prologue(self):
        before = self.registers()
        self.assertAccepted(self.run_hook("execjob_begin", "106.pbs", self.cfg))
        # the prologue after it is a repeated begin: recorded once
        self.assertAccepted(self.run_hook("execjob_prologue", "106.pbs", self.cfg))
        self.job_changes_registers()
        self.assertAccepted(self.run_hook("execjob_epilogue", "106.pbs", self.cfg))
        self.assertEqual(self.registers(), before)

    def test_requeued_job_begins_again(self):
        before = self.registers()
        self.assertAccepted(self.run_hook("execjob_prologue", "107.pbs", self.cfg))
        self.assertAccepted(self.run_hook("execjob_prologue", "107.pbs", self.cfg))
        self.job_changes_registers()
        self.assertAccepted(self.run_hook("execjob_epilogue", "107.pbs", self.cfg))
        self.assertEqual(self.registers(), before)

    def test_restore_that_fails_takes_the_node_offline(self):
        """A register that cannot be written back (the emulated file made read-only, i.e. the
        device refuses the write) fails the restore: the epilogue offlines the vnode itself."""
        self.assertAccepted(self.run_hook("execjob_prologue", "108.pbs", self.cfg))
        self.job_changes_registers()
        for cpu in range(CPUS):
            os.chmod(self.reg_file(cpu), 0o444)
        if os.geteuid() == 0:
            # root ignores file modes: take the CPU's register file away instead
            os.rename(self.reg_file(3), self.reg_file(3) + ".gone")
        res = self.run_hook("execjob_epilogue", "108.pbs", self.cfg)
        self.assertAccepted(res)
        self.assertOffline(res, contains="MSR restore failed after job 108.pbs")
        self.assertEqual(self.held(), [self.local])
        self.assertTrue(any(j == "108.pbs" and "MSR restore failed" in m
                            for j, m in res.job_logs), repr(res))


@needs_msrsave
class HealthTests(NodeTestCase):
    """exechost_startup baseline and exechost_periodic drift checks with the real msrsave."""

    def setUp(self):
        NodeTestCase.setUp(self)
        self.emulate()
        self.cfg = self.config()

    def startup(self):
        res = self.run_hook("exechost_startup", config=self.cfg)
        self.assertAccepted(res)
        self.assertTrue(os.path.exists(self.baseline), repr(res))
        return res

    def test_startup_takes_a_baseline(self):
        res = self.startup()
        self.assertUntouched(res)
        self.assertIn("baseline", res.log_text(LOG_DEBUG))

    def test_periodic_drift_offlines_and_clean_check_frees(self):
        self.startup()
        original = self.read_msr(1, PERF_CTL)
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)

        self.write_msr(1, PERF_CTL, original ^ 0x0C00)  # drift, with no job on the host
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertOffline(res, contains="MSR drift")
        self.assertIn("MSR drift", res.log_text(LOG_ERROR))
        self.assertEqual(self.held(), [self.local])
        comment = res.vnodes[self.local]["comment"]
        self.assertServer(ND_OFFLINE, comment)

        # still drifted: stays offline, the same comment is not rewritten
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertServer(ND_OFFLINE, comment)

        self.write_msr(1, PERF_CTL, original)  # an admin fixed it
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertEqual(res.vnodes[self.local]["state"], ND_FREE, repr(res))
        self.assertEqual(res.vnodes[self.local]["set"], ["state", "comment"], repr(res))
        self.assertServer(ND_FREE, None)
        self.assertIsNone(self.marker())
        self.assertIn("back in service", res.log_text(LOG_WARNING))

    def test_drift_comment_names_the_drift_once(self):
        """msrsave's summary already starts with "MSR drift:"; the comment says it once."""
        self.startup()
        self.write_msr(1, PERF_CTL, self.read_msr(1, PERF_CTL) ^ 0x0C00)
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertOffline(res)
        self.assertEqual(res.vnodes[self.local]["comment"],
                         "msr-restore: MSR drift: 1 registers on 1 CPUs differ from the snapshot "
                         "(0x00000199 IA32_PERF_CTL)")

    def test_clean_check_leaves_an_admins_offline_alone(self):
        self.startup()
        self.admin_offline("disk replacement")
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertServer(ND_OFFLINE, "disk replacement")

    def test_drift_does_not_take_over_an_admins_offline(self):
        """pbsnodes -o -C "admin: maintenance", then a drift, then the registers fixed: the
        vnode stays offline with the admin's comment throughout (the mom sees state and comment
        None; the hook asks the server)."""
        self.startup()
        self.admin_offline("admin: maintenance")
        original = self.read_msr(0, PERF_CTL)
        self.write_msr(0, PERF_CTL, original ^ 0x0100)
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIn("not by this hook", res.log_text(LOG_ERROR))
        self.assertIsNone(self.marker())
        self.write_msr(0, PERF_CTL, original)
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertServer(ND_OFFLINE, "admin: maintenance")

    def test_job_failure_does_not_take_over_an_admins_offline(self):
        """An admin offlined the node while a job ran; its restore fails: comment kept."""
        self.admin_offline("admin: maintenance")
        cfg = self.fake_config("fail")
        res = self.run_hook("execjob_epilogue", "311.pbs", cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIsNone(self.marker())
        self.assertTrue(any("MSR restore failed" in m for _, m in res.job_logs), repr(res))

    def test_comment_changed_by_admin_is_not_freed(self):
        self.startup()
        self.write_msr(2, PERF_CTL, self.read_msr(2, PERF_CTL) ^ 0x0100)
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertOffline(res)
        self.write_msr(2, PERF_CTL, self.read_msr(2, PERF_CTL) ^ 0x0100)
        self.admin_offline("investigating MSRs -- bob")
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIsNone(self.marker(), "the admin owns the vnode now")
        self.assertServer(ND_OFFLINE, "investigating MSRs -- bob")

    def test_brought_back_by_an_admin_is_dropped_and_retaken_on_drift(self):
        """pbsnodes -r while the hook held the vnode: the hook forgets it; a drift still there
        takes it offline again."""
        self.startup()
        self.write_msr(2, PERF_CTL, self.read_msr(2, PERF_CTL) ^ 0x0100)
        self.assertOffline(self.run_hook("exechost_periodic", config=self.cfg))
        self.server[self.local] = {"state": ND_FREE, "comment": None}  # pbsnodes -r
        # just taken offline: the server may not have it yet, so the hook still holds it
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertUntouched(res)
        self.assertEqual(self.held(), [self.local])
        self.age_marker(3600)
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertOffline(res, contains="MSR drift")
        self.assertIn("brought back while this hook held it", res.log_text(LOG_WARNING))
        self.assertEqual(self.held(), [self.local])

    def test_server_unreachable(self):
        """Without the server's view: a failure still takes the vnode offline (a host with wrong
        registers must not run jobs); bringing it back waits until the server can be asked."""
        self.startup()
        original = self.read_msr(1, PERF_CTL)
        self.write_msr(1, PERF_CTL, original ^ 0x0100)
        res = self.run_hook("exechost_periodic", config=self.cfg, server_reachable=False)
        self.assertOffline(res, contains="MSR drift")
        self.assertIn("cannot connect to the PBS server", res.log_text(LOG_WARNING))
        self.write_msr(1, PERF_CTL, original)
        res = self.run_hook("exechost_periodic", config=self.cfg, server_reachable=False)
        self.assertUntouched(res)
        self.assertEqual(self.held(), [self.local])
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertEqual(res.vnodes[self.local]["set"], ["state", "comment"], repr(res))
        self.assertServer(ND_FREE, None)
        self.assertIsNone(self.marker())

    def test_marker_of_an_earlier_version_is_honoured(self):
        """Version 1 markers listed names only; their vnodes still come back."""
        self.startup()
        os.makedirs(self.hook_state_dir)
        with open(os.path.join(self.hook_state_dir, "offline.json"), "w") as f:
            json.dump({"vnodes": [self.local], "reason": "MSR drift: old", "event": "x",
                       "time": "then", "comment_prefix": "msr-restore: "}, f)
        self.server[self.local] = {"state": ND_OFFLINE, "comment": "msr-restore: MSR drift: old"}
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertServer(ND_FREE, None)
        self.assertIsNone(self.marker())

    def test_periodic_skips_the_check_while_jobs_run(self):
        self.startup()
        self.assertAccepted(self.run_hook("execjob_prologue", "301.pbs", self.cfg))
        self.job_changes_registers()
        # the job is in e.job_list and in the state dir: no drift check
        res = self.run_hook("exechost_periodic", config=self.cfg, job_list=["301.pbs"])
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIn("skipped", res.log_text(LOG_DEBUG))
        # the state dir alone is enough (e.g. the mom lost track of the job)
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertAccepted(self.run_hook("execjob_epilogue", "301.pbs", self.cfg))
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertEqual(res.log_text(LOG_ERROR), "")

    def test_periodic_ends_a_job_the_mom_forgot(self):
        """msrsave holds the host for a job the mom no longer lists (its end hook never ran):
        the periodic hook has msrsave reconcile with the mom's job list, which ends it once it
        has been registered for msrsave's grace period (120 s) and restores the registers after
        the last one."""
        self.assertAccepted(self.run_hook("exechost_startup", config=self.cfg))
        before = self.registers()
        self.assertAccepted(self.run_hook("execjob_prologue", "303.pbs", self.cfg))
        self.assertAccepted(self.run_hook("execjob_prologue", "304.pbs", self.cfg))
        self.job_changes_registers()
        # young registrations, or jobs the mom lists: left alone
        res = self.run_hook("exechost_periodic", config=self.cfg, job_list=["304.pbs"])
        self.assertAccepted(res)
        self.assertEqual(self.registered(), ["303.pbs", "304.pbs"])
        self.assertNotEqual(self.registers(), before)
        self.age_registration("303.pbs", 130)  # a fixture: msrsave's grace is 120 s
        res = self.run_hook("exechost_periodic", config=self.cfg, job_list=["304.pbs"])
        self.assertAccepted(res)
        self.assertIn("the mom no longer runs this job: job 303.pbs ended by reconciliation: "
                      "registered 130 s ago", res.log_text(LOG_WARNING))
        self.assertIn("other jobs still on this host: 304.pbs", res.log_text(LOG_WARNING))
        self.assertEqual(self.registered(), ["304.pbs"])
        self.assertNotEqual(self.registers(), before, "304.pbs still runs")
        self.age_registration("304.pbs", 130)
        res = self.run_hook("exechost_periodic", config=self.cfg, job_list=[])
        self.assertAccepted(res)
        warnings = res.log_text(LOG_WARNING)
        self.assertIn("job 304.pbs ended by reconciliation", warnings)
        self.assertIn("MSRs restored (", warnings)
        self.assertIn("changed by the job(s): 0x00000199 IA32_PERF_CTL on CPUs 0-3", warnings)
        self.assertEqual(self.registers(), before)
        self.assertEqual(self.registered(), [])
        self.assertUntouched(res)  # and the check that follows is clean
        self.assertIn("MSR check clean", res.log_text(LOG_DEBUG))

    def test_periodic_restore_failure_of_a_job_the_mom_forgot_offlines(self):
        """The reconcile's restore fails (a CPU's register file gone): msrsave says so, keeps
        the snapshot with no job left, and the hook takes the vnode offline with its words."""
        self.assertAccepted(self.run_hook("exechost_startup", config=self.cfg))
        self.assertAccepted(self.run_hook("execjob_prologue", "305.pbs", self.cfg))
        self.job_changes_registers()
        self.age_registration("305.pbs", 130)
        os.rename(self.reg_file(3), self.reg_file(3) + ".gone")
        res = self.run_hook("exechost_periodic", config=self.cfg, job_list=[])
        self.assertAccepted(res)
        self.assertOffline(res, contains="MSR restore failed after a job the mom no longer "
                           "runs: restore incomplete at the end of job 305.pbs")
        self.assertIn("cannot end the jobs the mom no longer runs", res.log_text(LOG_ERROR))
        self.assertEqual(self.held(), [self.local])

    def test_periodic_without_baseline_takes_one(self):
        res = self.run_hook("exechost_periodic", config=self.cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertTrue(os.path.exists(self.baseline))
        self.assertIn("no baseline", res.log_text(LOG_WARNING))

    def test_drift_with_on_drift_log_keeps_the_node(self):
        cfg = self.config(on_drift="log")
        self.assertAccepted(self.run_hook("exechost_startup", config=cfg))
        self.write_msr(0, PERF_CTL, self.read_msr(0, PERF_CTL) ^ 0x0100)
        res = self.run_hook("exechost_periodic", config=cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIn("MSR drift", res.log_text(LOG_WARNING))

    def test_startup_keeps_baseline_while_jobs_hold_the_node(self):
        self.startup()
        with open(self.baseline, "rb") as f:
            first = f.read()
        self.assertAccepted(self.run_hook("execjob_prologue", "302.pbs", self.cfg))
        self.job_changes_registers()
        res = self.run_hook("exechost_startup", config=self.cfg)  # mom restarted under the job
        self.assertAccepted(res)
        with open(self.baseline, "rb") as f:
            self.assertEqual(f.read(), first)
        self.assertIn("302.pbs", res.log_text(LOG_WARNING))

    def test_startup_allowlist_load(self):
        """load_allowlist: msrsave picks the list for the CPU (06_55 here) from allowlist_dir,
        which msrsave reads from msr-restore.conf ($MSR_RESTORE_CONFIG) itself."""
        al_dir = os.path.join(self.tmp, "allowlists")
        os.makedirs(al_dir)
        with open(ALLOWLIST) as src, open(os.path.join(al_dir, "al_06_55"), "w") as dst:
            dst.write(src.read())
        conf = os.path.join(self.tmp, "msr-restore.conf")
        with open(conf, "w") as f:
            f.write("allowlist_dir = %s\n" % al_dir)
        self.env["MSR_RESTORE_CONFIG"] = conf
        cfg = self.config(load_allowlist=True)
        res = self.run_hook("exechost_startup", config=cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIn("allowlist loaded: %s" % os.path.join(al_dir, "al_06_55"),
                      res.log_text(LOG_DEBUG))
        self.assertTrue(os.path.exists(self.baseline))

    def test_startup_allowlist_missing_offlines(self):
        al_dir = os.path.join(self.tmp, "empty-allowlists")
        os.makedirs(al_dir)
        conf = os.path.join(self.tmp, "msr-restore.conf")
        with open(conf, "w") as f:
            f.write("allowlist_dir = %s\n" % al_dir)
        self.env["MSR_RESTORE_CONFIG"] = conf
        cfg = self.config(load_allowlist=True)
        res = self.run_hook("exechost_startup", config=cfg)
        self.assertAccepted(res)
        self.assertOffline(res, contains="cannot load the MSR allowlist")
        self.assertFalse(os.path.exists(self.baseline))


class FailureTests(NodeTestCase):
    """msrsave missing, hanging, printing garbage, refusing: the hook still ends in time with
    the safe outcome and a clear log line. A fake msrsave plays the hang and the garbage."""

    def test_msrsave_missing_prologue_rejects_and_offlines(self):
        cfg = self.config(msrsave=os.path.join(self.tmp, "bin", "msrsave"))
        res = self.run_hook("execjob_prologue", "401.pbs", cfg)
        self.assertRejected(res)
        self.assertIn("cannot run msrsave", res.reject_msg)
        self.assertOffline(res, contains="cannot snapshot MSRs for job 401.pbs")
        self.assertEqual(self.held(), [self.local])
        self.assertTrue(res.job_logs)

    def test_msrsave_missing_prologue_accept_policy(self):
        cfg = self.config(msrsave=os.path.join(self.tmp, "bin", "msrsave"),
                          on_snapshot_failure="accept")
        res = self.run_hook("execjob_prologue", "402.pbs", cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIn("runs without an MSR snapshot", res.log_text(LOG_WARNING))

    def test_msrsave_missing_epilogue_offlines_and_accepts(self):
        cfg = self.config(msrsave=os.path.join(self.tmp, "bin", "msrsave"))
        res = self.run_hook("execjob_epilogue", "403.pbs", cfg)
        self.assertAccepted(res)
        self.assertOffline(res, contains="MSR restore failed after job 403.pbs")
        self.assertIn("cannot run msrsave", res.log_text(LOG_ERROR))

    def test_msrsave_missing_periodic_logs_and_leaves_the_node(self):
        os.makedirs(os.path.dirname(self.baseline))
        with open(self.baseline, "w") as f:
            f.write("{}")
        cfg = self.config(msrsave=os.path.join(self.tmp, "bin", "msrsave"))
        res = self.run_hook("exechost_periodic", config=cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIn("drift check could not run", res.log_text(LOG_ERROR))

    def test_msrsave_timeout_prologue(self):
        cfg = self.fake_config("sleep", timeout=2, alarm=8)
        res = self.run_hook("execjob_prologue", "404.pbs", cfg, alarm=8)
        self.assertRejected(res)
        self.assertIn("timed out after 2s", res.reject_msg)
        self.assertLess(res.elapsed, 8)
        self.assertOffline(res)

    def test_msrsave_timeout_epilogue(self):
        cfg = self.fake_config("sleep", timeout=2, alarm=8)
        res = self.run_hook("execjob_epilogue", "405.pbs", cfg, alarm=8)
        self.assertAccepted(res)
        self.assertOffline(res, contains="timed out")
        self.assertLess(res.elapsed, 8)

    def test_timeout_above_alarm_is_clamped(self):
        """A timeout that would run into the alarm is brought below it (and said so)."""
        cfg = self.fake_config("sleep", timeout=60, alarm=7)
        res = self.run_hook("execjob_end", "406.pbs", cfg, alarm=7)
        self.assertAccepted(res)
        self.assertOffline(res, contains="timed out")
        self.assertIn("does not leave", res.log_text(LOG_ERROR))

    def test_msrsave_bad_json(self):
        cfg = self.fake_config("badjson")
        res = self.run_hook("execjob_epilogue", "407.pbs", cfg)
        self.assertAccepted(res)
        self.assertOffline(res, contains="printed no JSON")

    def test_msrsave_crash_without_output(self):
        cfg = self.fake_config("empty")
        res = self.run_hook("execjob_prologue", "408.pbs", cfg)
        self.assertRejected(res)
        self.assertIn("exit 101", res.reject_msg)
        self.assertIn("crashed before printing anything", res.reject_msg)

    def test_restore_failure_names_registers_on_sister_only(self):
        self.local = "node2"
        vnodes = ["node1", "node2", "node2[1]", "node20"]
        cfg = self.fake_config("fail")
        res = self.run_hook("execjob_end", "409.pbs", cfg, vnodes=vnodes, in_ms_mom=False)
        self.assertAccepted(res)
        self.assertOffline(res, "node2", contains="IA32_PERF_CTL")
        # A register a package shares is named with its package, once (in the mom log: the
        # vnode comment is cut at MAX_COMMENT characters).
        self.assertIn("package 1 (CPU 56) MSR 0x00000610 (MSR_PKG_POWER_LIMIT)",
                      res.log_text(LOG_ERROR))
        self.assertOffline(res, "node2[1]")
        self.assertUntouched(res, "node1")
        self.assertUntouched(res, "node20")
        self.assertEqual(self.held(), ["node2", "node2[1]"])

    def test_restore_failure_with_on_restore_failure_log(self):
        cfg = self.fake_config("fail", on_restore_failure="log")
        res = self.run_hook("execjob_epilogue", "410.pbs", cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIn("MSR restore failed", res.log_text(LOG_ERROR))

    def test_msrsave_error_object(self):
        cfg = self.fake_config("error")
        res = self.run_hook("execjob_prologue", "411.pbs", cfg)
        self.assertRejected(res)
        self.assertIn("state directory %s: cannot create: File exists (os error 17)"
                      % self.state_dir, res.reject_msg)

    def test_local_vnode_missing_from_vnode_list_is_added(self):
        cfg = self.fake_config("fail")
        res = self.run_hook("execjob_epilogue", "412.pbs", cfg,
                            vnodes=["othernode"])
        self.assertAccepted(res)
        self.assertOffline(res)
        self.assertUntouched(res, "othernode")

    def test_internal_error_never_escapes(self):
        """get_local_nodename() giving None makes the vnode code fail: the prologue is rejected
        and the epilogue accepted, with the traceback in the log, never an exception."""
        cfg = self.fake_config("fail")
        res = self.run_hook("execjob_prologue", "413.pbs", cfg, local=None)
        self.assertRejected(res)
        self.assertIn("internal error", res.reject_msg)
        self.assertIn("Traceback", res.log_text(LOG_ERROR))
        res = self.run_hook("execjob_epilogue", "413.pbs", cfg, local=None)
        self.assertAccepted(res)
        self.assertIn("Traceback", res.log_text(LOG_ERROR))

    def test_server_periodic_event_does_nothing(self):
        """'freq' also makes the server run the script with e.type == pbs.PERIODIC."""
        cfg = self.fake_config("ok")
        res = self.run_hook("periodic", config=cfg)
        self.assertAccepted(res)
        self.assertEqual(self.fake_calls(), [])

    def test_server_periodic_with_no_stderr_and_a_failing_logmsg(self):
        """pbs_server runs the hook for pbs.PERIODIC with sys.stderr None; if pbs.logmsg fails
        there too (as on a PBS built for Python 3.11 without PY_SSIZE_T_CLEAN), the hook must
        still end with accept, not an exception."""
        cfg = self.fake_config("ok")
        res = self.run_hook("periodic", config=cfg,
                            logmsg_error="PY_SSIZE_T_CLEAN macro must be defined for '#' formats")
        self.assertAccepted(res)

    def test_failing_logmsg_in_a_mom_event_goes_to_stderr(self):
        cfg = self.fake_config("fail")
        res = self.run_hook("execjob_epilogue", "417.pbs", cfg, logmsg_error="logmsg broke")
        self.assertAccepted(res)
        self.assertOffline(res)
        self.assertIn(b"MSR restore failed after job 417.pbs", res.proc.stderr)

    def test_internal_error_with_a_failing_logmsg_still_ends_the_hook(self):
        cfg = self.fake_config("fail")
        res = self.run_hook("execjob_prologue", "418.pbs", cfg, local=None,
                            logmsg_error="logmsg broke")
        self.assertRejected(res)

    def test_uninteresting_event_types_are_accepted(self):
        cfg = self.fake_config("ok")
        res = self.run_hook("execjob_launch", "414.pbs", cfg)
        self.assertAccepted(res)
        self.assertEqual(self.fake_calls(), [])

    def test_msr_restore_keys_are_passed_with_set(self):
        """The hook config's msr-restore keys go to every msrsave call as --set KEY=VALUE,
        msr_restore_conf as --config; a job begin or end makes no other call."""
        conf = os.path.join(self.tmp, "site.conf")
        cfg = self.fake_config("ok", msr_restore_conf=conf, lock_timeout=30, backend="msr",
                               allowlist_dir=["/a", "/b"])
        self.assertAccepted(self.run_hook("execjob_prologue", "415.pbs", cfg))
        self.assertAccepted(self.run_hook("execjob_end", "415.pbs", cfg))
        sets = ["--config", conf, "--set", "allowlist_dir=/a:/b", "--set", "backend=msr",
                "--set", "baseline=" + self.baseline, "--set", "lock_timeout=30",
                "--set", "root=" + self.root, "--set", "state_dir=" + self.state_dir]
        self.assertEqual(self.fake_calls(), [
            ["--format", "json"] + sets + ["job", "begin", "415.pbs"],
            ["--format", "json"] + sets + ["job", "end", "415.pbs"]])

    def test_null_or_empty_msr_restore_keys_are_not_passed(self):
        cfg = self.fake_config("ok", root="", state_dir=None, baseline=None, on_drift=None)
        self.assertAccepted(self.run_hook("execjob_prologue", "416.pbs", cfg))
        self.assertEqual(self.fake_calls(), [["--format", "json", "job", "begin", "416.pbs"]])

    def test_periodic_asks_config_show_and_reconcile(self):
        """The periodic hook asks msrsave: config show (once), job reconcile with the mom's job
        list; nothing else while jobs run. Startup: config show, job status, save."""
        cfg = self.fake_config("ok", root="", state_dir=None)
        base = ["--format", "json", "--set", "baseline=" + self.baseline]
        res = self.run_hook("exechost_periodic", config=cfg, job_list=["7.pbs", "8.pbs"])
        self.assertAccepted(res)
        self.assertEqual(self.fake_calls(), [
            base + ["config", "show"],
            base + ["job", "reconcile", "--running-jobs=7.pbs,8.pbs"]])
        os.unlink(self.fake_log)
        res = self.run_hook("exechost_periodic", config=cfg, job_list=[])
        self.assertAccepted(res)
        # the fake's config show says the baseline is the one --set gave; none there: taken
        self.assertEqual(self.fake_calls(), [
            base + ["config", "show"],
            base + ["job", "reconcile", "--running-jobs="],
            base + ["save", self.baseline]])
        os.unlink(self.fake_log)
        res = self.run_hook("exechost_startup", config=cfg)
        self.assertAccepted(res)
        self.assertEqual(self.fake_calls(), [
            base + ["config", "show"],
            base + ["job", "status"],
            base + ["save", self.baseline]])


class ConfigTests(NodeTestCase):
    """Missing or malformed hook config: one clear log line, safe defaults."""

    def write(self, text):
        path = os.path.join(self.tmp, "broken.json")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_malformed_json_logs_and_uses_defaults(self):
        path = self.write('{"msrsave": "/usr/bin/msrsave", "timeout": 10,,}')
        # a job on the host: periodic does nothing else, so the defaults touch nothing real
        res = self.run_hook("exechost_periodic", config=path, job_list=["1.pbs"])
        self.assertAccepted(res)
        errors = res.log_text(LOG_ERROR)
        self.assertIn("hook config %s is not valid JSON" % path, errors)
        self.assertIn("line 1", errors)
        self.assertIn("using built-in defaults", errors)

    def test_not_an_object(self):
        path = self.write('["msrsave"]')
        res = self.run_hook("exechost_periodic", config=path, job_list=["1.pbs"])
        self.assertAccepted(res)
        self.assertIn("must be a JSON object", res.log_text(LOG_ERROR))

    def test_missing_config_file(self):
        res = self.run_hook("exechost_periodic", config=os.path.join(self.tmp, "nope.json"),
                            job_list=["1.pbs"])
        self.assertAccepted(res)
        self.assertIn("cannot read hook config", res.log_text(LOG_ERROR))

    def test_no_config_imported(self):
        res = self.run_hook("exechost_periodic", config=None, job_list=["1.pbs"])
        self.assertAccepted(res)
        self.assertIn("PBS_HOOK_CONFIG_FILE unset", res.log_text(LOG_WARNING))

    def test_bad_values_fall_back_per_key(self):
        """A bad value of one of the hook's own keys costs only that key: the rest of the file
        still applies. A key the hook no longer has is ignored with a warning."""
        cfg = self.fake_config("fail", timeout="ten", on_restore_failure="shrug", alarm=-1,
                               load_allowlist="yes", stale_job_grace=600)
        res = self.run_hook("execjob_epilogue", "501.pbs", cfg)
        self.assertAccepted(res)
        errors = res.log_text(LOG_ERROR)
        self.assertIn("timeout must be a positive number of seconds, got 'ten'", errors)
        self.assertIn("on_restore_failure must be one of offline|log, got 'shrug'", errors)
        self.assertIn("alarm must be a positive number", errors)
        self.assertIn("load_allowlist must be true or false", errors)
        self.assertIn("unknown key 'stale_job_grace' ignored", res.log_text(LOG_WARNING))
        self.assertOffline(res)  # on_restore_failure fell back to offline
        # the fake msrsave from the file was still used, and stale_job_grace not passed on
        calls = self.fake_calls()
        self.assertEqual(calls[0][-3:], ["job", "end", "501.pbs"])
        self.assertFalse([a for a in calls[0] if "stale_job_grace" in a], calls)

    def check_config(self, path, *args):
        return subprocess.run([sys.executable, HOOK, "--check-config", path] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)

    def test_shipped_config_is_valid(self):
        shipped = os.path.join(os.path.dirname(HOOK), "msr_restore_hook.json")
        out = self.check_config(shipped, "--msrsave", self.msrsave or FAKE_MSRSAVE)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stderr, b"")
        cfg = json.loads(out.stdout.decode())
        self.assertLess(cfg["timeout"], cfg["alarm"])
        self.assertEqual(cfg["msr_restore_set"], [])
        self.assertEqual(cfg["msr_restore"]["on_drift"], "drain")

    def test_check_config_command_line(self):
        path = self.write('{"timeout": 50, "alarm": 30}')
        out = self.check_config(path, "--msrsave", FAKE_MSRSAVE)
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"does not leave", out.stderr)
        out = self.check_config(path, "--msrsave", FAKE_MSRSAVE, "--get", "alarm")
        self.assertEqual(out.stdout.strip(), b"30")
        out = subprocess.run([sys.executable, HOOK], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.env)
        self.assertEqual(out.returncode, 2)
        self.assertIn(b"runs inside PBS", out.stderr)

    def test_check_config_needs_msrsave(self):
        path = self.write('{"msrsave": "%s/no-msrsave"}' % self.tmp)
        out = self.check_config(path)
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"msrsave %s/no-msrsave is not there" % self.tmp.encode(), out.stderr)
        self.assertIn(b"--msrsave PATH", out.stderr)


@needs_msrsave
class SharedConfigTests(NodeTestCase):
    """The msr-restore keys: msrsave judges them and says what they are (config show); the
    hook only passes them on."""

    def setUp(self):
        NodeTestCase.setUp(self)
        self.emulate()

    def write_conf(self, text):
        conf = os.path.join(self.tmp, "site-msr-restore.conf")
        with open(conf, "w") as f:
            f.write(text)
        return conf

    def check_config(self, path, *args):
        return subprocess.run([sys.executable, HOOK, "--check-config", path] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)

    def test_bad_shared_value_offlines_on_begin_with_msrsaves_words(self):
        """on_drift = offline (the hook's old word): msrsave refuses it, naming it; the job's
        begin fails, the vnode goes offline with msrsave's message in the comment."""
        cfg = self.config(on_drift="offline")
        res = self.run_hook("execjob_prologue", "601.pbs", cfg)
        self.assertRejected(res)
        wording = 'bad argument \'on_drift=offline\' in --set: on_drift: "offline" is not drain or log'
        self.assertOffline(res, contains=wording)
        self.assertIn(wording, res.reject_msg)
        self.assertIn(wording, res.log_text(LOG_ERROR))
        self.assertEqual(self.registered(), [])

    def test_unknown_shared_key_offlines_on_begin(self):
        cfg = self.config(on_drfit="log")
        res = self.run_hook("execjob_prologue", "602.pbs", cfg)
        self.assertRejected(res)
        self.assertOffline(res, contains="unknown key 'on_drfit'")

    def test_bad_shared_value_periodic_says_the_check_could_not_run(self):
        cfg = self.config(lock_timeout=0)
        res = self.run_hook("exechost_periodic", config=cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        errors = res.log_text(LOG_ERROR)
        self.assertIn("MSR drift check could not run: bad argument 'lock_timeout=0' in --set: "
                      "lock_timeout", errors)

    def test_check_config_catches_a_bad_shared_key(self):
        path = self.config(on_drift="offline")
        out = self.check_config(path)
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn(b'msrsave does not accept the msr-restore configuration: bad argument '
                      b'\'on_drift=offline\' in --set: on_drift: "offline" is not drain or log',
                      out.stderr)
        out = self.check_config(self.config(on_drift="log"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout.decode())["msr_restore"]["on_drift"], "log")

    def test_check_config_catches_a_bad_msr_restore_conf(self):
        conf = self.write_conf("state_dir = %s\nthis line is broken\n" % self.state_dir)
        out = self.check_config(self.config(msr_restore_conf=conf))
        self.assertEqual(out.returncode, 1)
        self.assertIn(("%s:2" % conf).encode(), out.stderr)

    def test_msr_restore_conf_supplies_state_dir_baseline_and_on_drift(self):
        """msr_restore_conf names the file msrsave reads (--config): its state_dir is where
        jobs are registered, its baseline is the one the health events take and check, its
        on_drift = log keeps the vnode in service on drift."""
        state = os.path.join(self.tmp, "from-conf-state")
        baseline = os.path.join(self.tmp, "from-conf", "baseline.msr")
        conf = self.write_conf("# site config\nstate_dir = %s   # comment\nbaseline = %s\n"
                               "on_drift = log\n" % (state, baseline))
        cfg = self.config(state_dir=None, baseline=None, msr_restore_conf=conf)
        self.assertAccepted(self.run_hook("exechost_startup", config=cfg))
        self.assertTrue(os.path.exists(baseline))
        self.assertFalse(os.path.exists(self.baseline))
        self.assertAccepted(self.run_hook("execjob_prologue", "603.pbs", cfg))
        self.state_dir = state
        self.assertEqual(self.registered(), ["603.pbs"])
        self.assertAccepted(self.run_hook("execjob_epilogue", "603.pbs", cfg))
        self.write_msr(0, PERF_CTL, self.read_msr(0, PERF_CTL) ^ 0x0100)
        res = self.run_hook("exechost_periodic", config=cfg)
        self.assertAccepted(res)
        self.assertUntouched(res)
        self.assertIn("MSR drift: 1 registers", res.log_text(LOG_WARNING))
        self.assertIn("on_drift = log", res.log_text(LOG_WARNING))
        # the hook config's own on_drift wins over the file's
        res = self.run_hook("exechost_periodic", config=self.config(
            state_dir=None, baseline=None, msr_restore_conf=conf, on_drift="drain"))
        self.assertOffline(res, contains="MSR drift: 1 registers")

    def test_msr_restore_config_env_is_msrsaves(self):
        """Without msr_restore_conf, msrsave reads $MSR_RESTORE_CONFIG itself."""
        baseline = os.path.join(self.tmp, "env-baseline.json")
        with open(self.msr_restore_conf, "w") as f:
            f.write("baseline = %s\n" % baseline)
        self.assertAccepted(self.run_hook("exechost_startup",
                                          config=self.config(baseline=None)))
        self.assertTrue(os.path.exists(baseline))

    def test_broken_msr_restore_conf_fails_the_begin_with_its_line(self):
        conf = self.write_conf("backend = auto\nthis line is broken\n")
        res = self.run_hook("execjob_prologue", "604.pbs",
                            self.config(msr_restore_conf=conf))
        self.assertRejected(res)
        self.assertOffline(res, contains="%s:2" % conf)


class PortabilityTests(unittest.TestCase):
    def test_hook_parses_as_python_3_6(self):
        """PBS ships its own Python 3; OpenPBS 20+ builds against 3.6 or later."""
        if sys.version_info < (3, 8):
            self.skipTest("ast feature_version needs Python 3.8")
        with open(HOOK) as f:
            ast.parse(f.read(), HOOK, feature_version=(3, 6))

    def test_hook_uses_only_the_standard_library(self):
        with open(HOOK) as f:
            tree = ast.parse(f.read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add(node.module.split(".")[0])
        self.assertEqual(names - {"fcntl", "json", "os", "signal", "subprocess", "sys", "time",
                                  "traceback"}, {"pbs"})


if __name__ == "__main__":
    unittest.main()
