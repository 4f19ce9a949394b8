# -*- coding: utf-8 -*-
"""A hook that only looks: what the `pbs` module gives a hook, one JSON line per run.

Run by the live suite (tests/live/run.sh) on a real OpenPBS and by test_standin.py under the
stand-in module; probe_expect.py holds what both must show. The only change it makes is the one
its config asks for ("clear_comment_on": an event name): it sets the local vnode's comment to
None in that event, to see what the module reads back and what the server does with it.

Config (application/x-config, JSON): {"out": DIR, "clear_comment_on": "exechost_periodic"}.
Each run appends a line to DIR/EVENT.jsonl.
"""

import json
import os
import sys
import time

import pbs

NAMES = ("EXECJOB_BEGIN", "EXECJOB_PROLOGUE", "EXECJOB_EPILOGUE", "EXECJOB_END",
         "EXECHOST_PERIODIC", "EXECHOST_STARTUP", "PERIODIC")
CONSTANTS = NAMES + ("LOG_DEBUG", "LOG_WARNING", "LOG_ERROR", "ND_FREE", "ND_OFFLINE",
                     "ND_JOBBUSY", "ND_DOWN")


def attr(obj, name):
    try:
        value = getattr(obj, name)
    except Exception as err:
        return {"raised": type(err).__name__,
                "is_attribute_error": isinstance(err, AttributeError)}
    if value is None or isinstance(value, (str, bool)):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def main():
    e = pbs.event()
    cfg = {}
    try:
        with open(pbs.hook_config_filename) as f:
            cfg = json.load(f)
    except Exception as err:
        cfg = {"error": repr(err)}
    names = dict((getattr(pbs, n), n.lower()) for n in NAMES if hasattr(pbs, n))
    event = names.get(e.type, str(e.type))
    rec = {"event": event, "hook_name": e.hook_name, "time": time.time(),
           "python": "%d.%d" % sys.version_info[:2],
           "stderr_is_none": sys.stderr is None, "stdout_is_none": sys.stdout is None,
           "constants": dict((n, getattr(pbs, n, None)) for n in CONSTANTS),
           "local_nodename": None}
    try:
        rec["local_nodename"] = pbs.get_local_nodename()
    except Exception as err:
        rec["local_nodename_error"] = repr(err)
    local = rec["local_nodename"]
    try:
        vl = e.vnode_list
        rec["vnode_list_type"] = type(vl).__name__
        rec["vnode_list_is_dict"] = type(vl) is dict
        rec["vnodes"] = dict((str(n), {"state": attr(v, "state"), "comment": attr(v, "comment")})
                             for n, v in vl.items())
        if cfg.get("clear_comment_on") == event and local in vl:
            vl[local].comment = None
            rec["comment_after_none"] = repr(vl[local].comment)
    except Exception as err:
        rec["vnode_list_error"] = {"type": type(err).__name__,
                                   "is_attribute_error": isinstance(err, AttributeError)}
    try:
        rec["job_list_type"] = type(e.job_list).__name__
        rec["job_list"] = sorted(str(j) for j in e.job_list.keys())
    except Exception as err:
        rec["job_list_error"] = {"type": type(err).__name__,
                                 "is_attribute_error": isinstance(err, AttributeError)}
    try:
        j = e.job
        rec["job"] = {"id": str(j.id), "in_ms_mom": j.in_ms_mom()}
    except Exception as err:
        rec["job_error"] = {"type": type(err).__name__,
                            "is_attribute_error": isinstance(err, AttributeError)}
    if event != "periodic" and local:
        start = time.time()
        try:
            server = pbs.server()
            if server is None:
                rec["server_vnode"] = "server() gave None"
            else:
                v = server.vnode(local)
                rec["server_vnode"] = None if v is None else {
                    "state": attr(v, "state"), "comment": attr(v, "comment")}
        except Exception as err:
            rec["server_vnode"] = "raised %r" % (err,)
        rec["server_vnode_seconds"] = round(time.time() - start, 3)
    try:
        pbs.logmsg(pbs.LOG_DEBUG, "probe: %s" % event)
        rec["logmsg"] = "ok"
    except Exception as err:
        rec["logmsg"] = repr(err)
    out = cfg.get("out")
    if out:
        try:
            with open(os.path.join(out, "%s.jsonl" % event), "a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
        except Exception as err:
            pbs.logmsg(pbs.LOG_ERROR, "probe: cannot write to %s: %r" % (out, err))
    e.accept()


main()
