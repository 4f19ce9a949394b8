"""Shared test plumbing: an emulated node made by the real msrsave, hook runs under the stand-in
`pbs` module, hook config files."""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unittest

TESTS = os.path.dirname(os.path.abspath(__file__))
PBS_HOOK = os.path.dirname(TESTS)
REPO = os.path.dirname(PBS_HOOK)
HOOK = os.path.join(PBS_HOOK, "msr_restore_hook.py")
STANDIN = os.path.join(TESTS, "standin")
FAKE_MSRSAVE = os.path.join(TESTS, "fake_msrsave")
ALLOWLIST = os.path.join(TESTS, "fixtures", "allowlist")

# pbs constants the tests compare with (same values as the stand-in and OpenPBS)
ND_FREE = 0x00
ND_OFFLINE = 0x01
ND_JOBBUSY = 0x10
LOG_DEBUG, LOG_WARNING, LOG_ERROR = 0x5, 0x6, 0x7

# Registers of the fixture allowlist with a write mask (the job changes these).
PERF_CTL = 0x199
CLOCK_MOD = 0x19A
PKG_POWER_LIMIT = 0x610
CPUS = 4


def msrsave_path():
    """The real msrsave (run.sh exports MSRSAVE), or None."""
    path = os.environ.get("MSRSAVE")
    if not path:
        for cand in (os.path.join(REPO, "target", "debug", "msrsave"),
                     os.path.join(REPO, "target", "release", "msrsave")):
            if os.access(cand, os.X_OK):
                return cand
        return None
    return path if os.access(path, os.X_OK) else None


def needs_msrsave(cls):
    """Class decorator: these tests run the real msrsave."""
    if msrsave_path() is None and not os.environ.get("MSR_RESTORE_PBS_REQUIRE_MSRSAVE"):
        return unittest.skip("the real msrsave is not built (run pbs_hook/tests/run.sh, or set "
                             "MSRSAVE)")(cls)
    return cls


class HookResult(object):
    def __init__(self, data, proc, elapsed):
        self.data = data
        self.proc = proc
        self.elapsed = elapsed
        self.outcome = data.get("outcome")
        self.reject_msg = data.get("reject_msg")
        self.logs = data.get("logs", [])
        self.job_logs = data.get("job_logs", [])
        self.vnodes = data.get("vnodes", {})
        self.job_resources_used = data.get("job_resources_used", {})

    def log_text(self, level=None):
        return "\n".join(m for lv, m in self.logs if level is None or lv == level)

    def __repr__(self):
        return "HookResult(outcome=%r, reject=%r, vnodes=%r,\n logs=\n  %s\n stderr=%s)" % (
            self.outcome, self.reject_msg, self.vnodes,
            "\n  ".join("%s %s" % (lv, m) for lv, m in self.logs),
            self.proc.stderr.decode("utf-8", "replace")[-2000:])


class NodeTestCase(unittest.TestCase):
    """A temp directory with an emulated node (when msrsave is there) and hook settings."""

    local = "node1"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="msr-restore-pbs-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.root = os.path.join(self.tmp, "root")
        self.state_dir = os.path.join(self.tmp, "state")
        self.hook_state_dir = os.path.join(self.tmp, "hookstate")
        self.baseline = os.path.join(self.tmp, "var", "baseline.msr")
        self.fake_log = os.path.join(self.tmp, "fake_msrsave.log")
        self.msrsave = msrsave_path()
        self.env = dict(os.environ)
        self.env.pop("PBS_HOOK_CONFIG_FILE", None)
        # msrsave reads $MSR_RESTORE_CONFIG (else /etc/msr-restore/msr-restore.conf, which
        # this host may have): an empty file, unless a test writes one
        self.msr_restore_conf = os.path.join(self.tmp, "msr-restore.conf")
        with open(self.msr_restore_conf, "w") as f:
            f.write("# empty: msrsave's defaults\n")
        self.env["MSR_RESTORE_CONFIG"] = self.msr_restore_conf
        self.env["FAKE_MSRSAVE_LOG"] = self.fake_log
        # The server's view of the vnodes ({name: {"state", "comment"}}), kept across hook runs.
        self.server = {}
        # PBS_HOME as the mom has it: mom_priv/hooks/resourcedef lists the server's custom
        # resources (define_resource()).
        self.pbs_home = os.path.join(self.tmp, "pbs_home")
        os.makedirs(os.path.join(self.pbs_home, "mom_priv", "hooks"))
        self.resources = {}

    # --- the emulated node -------------------------------------------------------------------

    def emulate(self):
        out = subprocess.run([self.msrsave, "emulate", self.root, "--cpus", str(CPUS),
                              "--allowlist", ALLOWLIST], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.env, timeout=60)
        self.assertEqual(out.returncode, 0, "msrsave emulate failed: %s %s"
                         % (out.stdout, out.stderr))

    def reg_file(self, cpu):
        base = os.path.join(self.root, "dev", "cpu", str(cpu))
        for name in ("msr_safe", "msr"):
            path = os.path.join(base, name)
            if os.path.exists(path):
                return path
        self.fail("no emulated register file under %s" % base)

    def read_msr(self, cpu, addr):
        with open(self.reg_file(cpu), "rb") as f:
            f.seek(8 * addr)
            raw = f.read(8)
        return struct.unpack("<Q", raw.ljust(8, b"\0"))[0]

    def write_msr(self, cpu, addr, value):
        """What a job does: change a register behind msrsave's back."""
        with open(self.reg_file(cpu), "r+b") as f:
            f.seek(8 * addr)
            f.write(struct.pack("<Q", value))

    def registers(self):
        return dict(((cpu, addr), self.read_msr(cpu, addr)) for cpu in range(CPUS)
                    for addr in (PERF_CTL, CLOCK_MOD, PKG_POWER_LIMIT))

    def job_changes_registers(self):
        """Change writable bits on every CPU (values differ from whatever is there)."""
        for cpu in range(CPUS):
            self.write_msr(cpu, PERF_CTL, self.read_msr(cpu, PERF_CTL) ^ 0x0A00)
            self.write_msr(cpu, CLOCK_MOD, self.read_msr(cpu, CLOCK_MOD) ^ 0x11)
        self.write_msr(0, PKG_POWER_LIMIT, self.read_msr(0, PKG_POWER_LIMIT) ^ 0x00000000000080FF)

    def msrsave_json(self, *args):
        """Ask the real msrsave (on the emulated node, with the test's state dir)."""
        out = subprocess.run([self.msrsave, "--format", "json", "--set", "root=" + self.root,
                              "--set", "state_dir=" + self.state_dir] + list(args),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                             timeout=60)
        return json.loads(out.stdout.decode())

    def registered(self):
        """The jobs msrsave holds the node for (msrsave job status)."""
        return self.msrsave_json("job", "status")["active_jobs"]

    def age_registration(self, job_id, seconds):
        """A fixture: make job_id's registration look `seconds` older, past msrsave's reconcile
        grace (as msr_backend/src/jobs/tests.rs ages one: the registration file's mtime)."""
        path = os.path.join(self.state_dir, "jobs", job_id)
        st = os.stat(path)
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))

    # --- hook config and runs ------------------------------------------------------------------

    def config(self, **overrides):
        cfg = {
            "msrsave": self.msrsave or FAKE_MSRSAVE,
            "root": self.root,
            "state_dir": self.state_dir,
            "baseline": self.baseline,
            "hook_state_dir": self.hook_state_dir,
            "alarm": 30,
            "timeout": 20,
        }
        cfg.update(overrides)
        for key in [k for k, v in cfg.items() if v is None]:
            del cfg[key]
        path = os.path.join(self.tmp, "hook_config_%d.json" % len(os.listdir(self.tmp)))
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def fake_config(self, mode, **overrides):
        """Config for a run with the fake msrsave (failure cases only)."""
        self.env["FAKE_MSRSAVE_MODE"] = mode
        overrides.setdefault("msrsave", FAKE_MSRSAVE)
        return self.config(**overrides)

    def server_vnode(self, name=None):
        """The simulated server's view of a vnode: {"state", "comment"}."""
        return self.server.setdefault(name or self.local, {"state": ND_FREE, "comment": None})

    def admin_offline(self, comment, name=None):
        """What `pbsnodes -o -C COMMENT NODE` does on the server."""
        self.server[name or self.local] = {"state": ND_OFFLINE, "comment": comment}

    def define_resource(self, name, rtype):
        """What `qmgr -c "create resource NAME type=TYPE"` leaves on every mom."""
        self.resources[name] = rtype
        with open(os.path.join(self.pbs_home, "mom_priv", "hooks", "resourcedef"), "w") as f:
            for n, t in sorted(self.resources.items()):
                f.write("%s type=%s\n" % (n, t))

    def apply_to_server(self, res):
        """What the server does with the vnode attributes a mom hook set, as observed on a live
        OpenPBS 23.06.06: state replaces the state, a comment replaces the comment, and a
        comment set to None ('' on the mom) removes it. A hook that ended in an exception or
        its alarm sends nothing."""
        if res.outcome not in ("accept", "reject"):
            return
        for name, v in res.vnodes.items():
            view = self.server_vnode(name)
            if "state" in v["set"]:
                view["state"] = v["state"]
            if "comment" in v["set"]:
                view["comment"] = v["comment"] or None
        # The server drops a job's whole resources_used update when one name in it is not a
        # resource it defines: a hook must never set one.
        built_in = ("cput", "cpupercent", "mem", "vmem", "walltime", "ncpus")
        unknown = sorted(n for n in res.job_resources_used
                         if n not in self.resources and n not in built_in)
        self.assertEqual(unknown, [], "resources_used names the server does not define: the "
                         "job's whole resources_used would be lost: %r" % (res,))

    def run_hook(self, event, job_id=None, config=None, vnodes=None, job_list=None,
                 in_ms_mom=True, alarm=30, hook_name=None, local="", server_reachable=True,
                 logmsg_error=None):
        """Run the hook as pbs_mom would (a separate Python process) for one event, then apply
        what it set to the simulated server (self.server).
        vnodes: the names in e.vnode_list (default: the local vnode); their state and comment
        are the server's business (self.server, admin_offline()): a mom event sees None.
        local=None makes pbs.get_local_nodename() return None (to provoke internal errors)."""
        if local == "":
            local = self.local
        spec = {"type": event, "alarm": alarm, "local_nodename": local,
                "hook_name": hook_name or ("msr_restore_begin" if event in (
                    "execjob_prologue", "execjob_begin", "exechost_startup")
                    else "msr_restore_end" if event in ("execjob_epilogue", "execjob_end")
                    else "msr_restore_check")}
        if vnodes is None:
            vnodes = [local or self.local]
        spec["vnode_list"] = sorted(vnodes)
        for name in spec["vnode_list"]:
            self.server_vnode(name)
        spec["server_vnodes"] = self.server
        spec["server_reachable"] = server_reachable
        spec["logmsg_error"] = logmsg_error
        spec["pbs_home"] = self.pbs_home
        if job_id is not None:
            spec["job"] = {"id": job_id, "euser": "alice", "egroup": "users",
                           "exec_vnode": "(%s:ncpus=4)" % (local or self.local), "run_count": 1,
                           "in_ms_mom": in_ms_mom, "Resource_List": {"ncpus": 4}}
        if job_list is not None:
            spec["job_list"] = dict((j, {"euser": "alice"}) for j in job_list)
        n = len(os.listdir(self.tmp))
        spec_path = os.path.join(self.tmp, "event_%d.json" % n)
        result_path = os.path.join(self.tmp, "result_%d.json" % n)
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        env = dict(self.env)
        env["PYTHONPATH"] = STANDIN
        env["PBS_STANDIN_EVENT"] = spec_path
        env["PBS_STANDIN_RESULT"] = result_path
        if config is not None:
            env["PBS_HOOK_CONFIG_FILE"] = config
        start = time.time()
        proc = subprocess.run([sys.executable, HOOK], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, timeout=alarm + 30,
                              cwd=self.tmp)
        elapsed = time.time() - start
        try:
            with open(result_path) as f:
                data = json.load(f)
        except (IOError, ValueError):
            self.fail("the hook left no result (exit %s): %s" % (
                proc.returncode, proc.stderr.decode("utf-8", "replace")))
        res = HookResult(data, proc, elapsed)
        # Whatever happens, no exception may leave the hook, and it must finish before its alarm.
        self.assertNotEqual(res.outcome, "exception", "an exception escaped the hook: %s\n%r"
                            % (data.get("traceback"), res))
        self.assertNotEqual(res.outcome, "alarm", "the hook ran into its alarm: %r" % res)
        self.apply_to_server(res)
        return res

    def marker(self):
        path = os.path.join(self.hook_state_dir, "offline.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def held(self):
        """The vnodes the hook's marker holds offline, sorted ([] without a marker)."""
        marker = self.marker()
        return sorted(marker["vnodes"]) if marker else []

    def age_marker(self, seconds):
        """Make the marker's entries look `seconds` older (past the hook's reconcile grace)."""
        path = os.path.join(self.hook_state_dir, "offline.json")
        data = self.marker()
        for entry in data["vnodes"].values():
            entry["since"] -= seconds
        with open(path, "w") as f:
            json.dump(data, f)

    def fake_calls(self):
        if not os.path.exists(self.fake_log):
            return []
        with open(self.fake_log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def assertAccepted(self, res):
        self.assertEqual(res.outcome, "accept", repr(res))

    def assertRejected(self, res):
        self.assertEqual(res.outcome, "reject", repr(res))

    def assertOffline(self, res, name=None, contains=None):
        name = name or self.local
        v = res.vnodes[name]
        self.assertEqual(v["state"], ND_OFFLINE, repr(res))
        self.assertTrue((v["comment"] or "").startswith("msr-restore: "), repr(res))
        if contains:
            self.assertIn(contains, v["comment"], repr(res))

    def assertServer(self, state, comment, name=None):
        """The simulated server's vnode after the hooks so far."""
        view = self.server_vnode(name)
        self.assertEqual((view["state"], view["comment"]), (state, comment), repr(self.server))

    def assertUntouched(self, res, name=None):
        name = name or self.local
        self.assertEqual(res.vnodes[name]["set"], [], repr(res))
