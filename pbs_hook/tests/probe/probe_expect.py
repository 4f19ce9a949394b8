"""What the probe hook (probe_hook.py) must see: what the real `pbs` module showed it on a live
OpenPBS 23.06.06, and therefore what the stand-in must show too. test_standin.py checks the
stand-in against this list; tests/live/run.sh checks a live server against the same list."""

import json
import os

MOM_JOB_EVENTS = ("execjob_begin", "execjob_prologue", "execjob_epilogue", "execjob_end")
MOM_EVENTS = MOM_JOB_EVENTS + ("exechost_periodic", "exechost_startup")

# The values OpenPBS gives these constants (hook.h, pbs_nodes.h); the stand-in has the same.
CONSTANTS = {"EXECJOB_BEGIN": 0x40, "EXECJOB_PROLOGUE": 0x80, "EXECJOB_EPILOGUE": 0x100,
             "EXECJOB_END": 0x200, "EXECHOST_PERIODIC": 0x1000, "EXECHOST_STARTUP": 0x2000,
             "PERIODIC": 0x8000, "LOG_DEBUG": 5, "LOG_WARNING": 6, "LOG_ERROR": 7,
             "ND_FREE": 0, "ND_OFFLINE": 1, "ND_DOWN": 2, "ND_JOBBUSY": 0x10}


def load(out_dir):
    """{event: [record, ...]} from the probe's output directory."""
    records = {}
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".jsonl"):
            with open(os.path.join(out_dir, name)) as f:
                records[name[:-len(".jsonl")]] = [json.loads(l) for l in f if l.strip()]
    return records


def incompatible(err):
    """A parameter the event does not have: pbs.EventIncompatibleError, an AttributeError."""
    return isinstance(err, dict) and err.get("type") == "EventIncompatibleError" \
        and err.get("is_attribute_error") is True


def check(records, local, events=MOM_EVENTS + ("periodic",)):
    """[(what, ok, detail)] for the records of `events` (each must have at least one)."""
    results = []

    def expect(what, ok, detail=""):
        results.append((what, bool(ok), detail))

    for event in events:
        recs = records.get(event) or []
        expect("%s: the probe ran" % event, recs, sorted(records))
        for rec in recs[-1:]:
            vnode = (rec.get("vnodes") or {}).get(local)
            expect("%s: e.vnode_list is a plain dict" % event,
                   rec.get("vnode_list_type") == "dict" and rec.get("vnode_list_is_dict"),
                   rec.get("vnode_list_type"))
            expect("%s: e.vnode_list holds the local vnode %s" % (event, local), vnode,
                   rec.get("vnodes"))
            expect("%s: pbs.logmsg works" % event, rec.get("logmsg") == "ok", rec.get("logmsg"))
            expect("%s: constants" % event, rec.get("constants") == CONSTANTS,
                   rec.get("constants"))
            if event in MOM_EVENTS:
                expect("%s: vnode state and comment are None in a mom event" % event,
                       vnode == {"state": None, "comment": None}, vnode)
                expect("%s: sys.stderr is there" % event, rec.get("stderr_is_none") is False)
            if event in MOM_JOB_EVENTS:
                expect("%s: e.job is there, in_ms_mom() is 'True' (a str) on the mother "
                       "superior" % event, (rec.get("job") or {}).get("in_ms_mom") == "True",
                       rec.get("job"))
                expect("%s: e.job_list raises EventIncompatibleError (an AttributeError)"
                       % event, incompatible(rec.get("job_list_error")),
                       rec.get("job_list_error"))
            if event in MOM_JOB_EVENTS + ("exechost_periodic",):
                sv = rec.get("server_vnode")
                expect("%s: pbs.server().vnode(local) gives the server's state" % event,
                       isinstance(sv, dict) and isinstance(sv.get("state"), int), sv)
            if event == "exechost_periodic":
                expect("%s: e.job_list is a dict" % event, rec.get("job_list_type") == "dict",
                       rec.get("job_list_type"))
                expect("%s: e.job raises EventIncompatibleError (an AttributeError)" % event,
                       incompatible(rec.get("job_error")), rec.get("job_error"))
            if "comment_after_none" in rec:
                expect("%s: comment = None reads back ''" % event,
                       rec["comment_after_none"] == "''", rec["comment_after_none"])
            if event == "periodic":
                expect("periodic (server): sys.stderr and sys.stdout are None",
                       rec.get("stderr_is_none") is True and rec.get("stdout_is_none") is True,
                       (rec.get("stderr_is_none"), rec.get("stdout_is_none")))
                expect("periodic (server): the vnode's state is there",
                       vnode and isinstance(vnode.get("state"), int), vnode)
                expect("periodic (server): e.job raises EventIncompatibleError",
                       incompatible(rec.get("job_error")), rec.get("job_error"))
    return results
