"""The stand-in `pbs` module behaves like the real one where it matters: the probe hook
(probe/probe_hook.py) runs under the stand-in for every event the hooks use and must see what it
saw on a live OpenPBS 23.06.06 (probe/probe_expect.py; tests/live/run.sh checks the live one)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from helpers import STANDIN, TESTS

sys.path.insert(0, os.path.join(TESTS, "probe"))
import probe_expect  # noqa: E402

PROBE = os.path.join(TESTS, "probe", "probe_hook.py")


class StandinMatchesRealModule(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="msr-restore-probe-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.out = os.path.join(self.tmp, "out")
        os.makedirs(self.out)

    def probe(self, event, clear_comment=False, **spec):
        config = os.path.join(self.tmp, "probe.json")
        with open(config, "w") as f:
            json.dump({"out": self.out,
                       "clear_comment_on": event if clear_comment else None}, f)
        spec.update({"type": event, "hook_name": "probe", "local_nodename": "node1",
                     "vnode_list": ["node1"], "alarm": 30,
                     "server_vnodes": {"node1": {"state": 1, "comment": "admin: maintenance"}}})
        if event.startswith("execjob_"):
            spec["job"] = {"id": "7.server", "in_ms_mom": True}
        spec_path = os.path.join(self.tmp, "event.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        env = dict(os.environ, PYTHONPATH=STANDIN, PBS_STANDIN_EVENT=spec_path,
                   PBS_STANDIN_RESULT=os.path.join(self.tmp, "result.json"),
                   PBS_HOOK_CONFIG_FILE=config)
        p = subprocess.run([sys.executable, PROBE], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=60)
        with open(os.path.join(self.tmp, "result.json")) as f:
            result = json.load(f)
        self.assertEqual(result["outcome"], "accept", p.stderr.decode())
        return result

    def test_probe_sees_what_it_saw_on_a_live_server(self):
        for event in probe_expect.MOM_EVENTS + ("periodic",):
            self.probe(event, clear_comment=(event == "exechost_periodic"))
        records = probe_expect.load(self.out)
        failed = [(what, detail) for what, ok, detail
                  in probe_expect.check(records, "node1") if not ok]
        self.assertEqual(failed, [])
        self.assertIn("comment_after_none", records["exechost_periodic"][-1])

    def test_server_vnode_is_the_servers_view(self):
        self.probe("exechost_periodic")
        rec = probe_expect.load(self.out)["exechost_periodic"][-1]
        self.assertEqual(rec["server_vnode"], {"state": 1, "comment": "admin: maintenance"})
        self.assertEqual(rec["vnodes"]["node1"], {"state": None, "comment": None})

    def test_server_that_cannot_be_reached(self):
        """pbs.server() gives None when the mom hook cannot connect (seen at mom start, before
        the server was up)."""
        self.probe("exechost_startup", server_reachable=False)
        rec = probe_expect.load(self.out)["exechost_startup"][-1]
        self.assertEqual(rec["server_vnode"], "server() gave None")

    def test_server_periodic_carries_state_and_comment(self):
        self.probe("periodic")
        rec = probe_expect.load(self.out)["periodic"][-1]
        self.assertEqual(rec["vnodes"]["node1"], {"state": 1, "comment": "admin: maintenance"})

    def test_comment_set_to_none_is_recorded_as_unset(self):
        result = self.probe("exechost_periodic", clear_comment=True)
        self.assertEqual(result["vnodes"]["node1"]["set"], ["comment"])
        self.assertEqual(result["vnodes"]["node1"]["comment"], "")


if __name__ == "__main__":
    unittest.main()
