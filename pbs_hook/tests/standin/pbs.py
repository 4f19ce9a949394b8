# -*- coding: utf-8 -*-
"""A stand-in for the `pbs` module a PBS hook imports, for running hooks under plain python3.

It follows the real OpenPBS 23.06 API for the parts a mom hook uses (src/lib/Libpython and
src/modules/python/pbs/v1 in OpenPBS):

- the integer constants with their real values (event types from hook.h, vnode states from
  pbs_nodes.h, log severities from hook.h);
- pbs.event(): .type, .hook_name, .hook_type, .requestor, .requestor_host, and per event type
  .job, .vnode_list, .job_list; reading a parameter the event type does not have raises
  pbs.EventIncompatibleError, as the real __getattr__ does;
- event.accept(ecode=0) and event.reject(emsg="", ecode=255) end the hook by raising
  SystemExit(str(ecode));
- pbs.vnode(name) objects with state (int bit mask) and comment, dict-like vnode_list;
- job objects: .id, .euser, .egroup, .exec_vnode, .run_count, .Resource_List[...],
  .in_ms_mom(), .rerun(), .delete();
- pbs.logmsg(level, msg), pbs.logjobmsg(jobid, msg), pbs.get_local_nodename(),
  pbs.hook_config_filename (from env PBS_HOOK_CONFIG_FILE, None when unset).

The test harness describes the event in a JSON file named by PBS_STANDIN_EVENT:

    {"type": "execjob_prologue", "hook_name": "msr_restore_begin", "alarm": 30,
     "local_nodename": "node1",
     "job": {"id": "42.server", "euser": "alice", "egroup": "users", "exec_vnode": "(node1:ncpus=4)",
             "run_count": 1, "in_ms_mom": true, "Resource_List": {"ncpus": 4}},
     "vnode_list": {"node1": {"state": 0, "comment": null}},
     "job_list": {"42.server": {...job...}}}

and reads what the hook did from the JSON file named by PBS_STANDIN_RESULT, written when the
hook process ends: {"outcome": "accept"|"reject"|"none"|"exception"|"alarm", "reject_msg",
"logs": [[level, msg]], "job_logs": [[jobid, msg]], "vnodes": {name: {"state", "comment",
"set": [attribute names the hook set]}}, "job_actions": [...], "traceback"}.

Like pbs_python, an uncaught exception is a hook error (recorded as "exception", exit 254) and
the hook's alarm (the "alarm" seconds of the event) kills it (recorded as "alarm", exit 253).
"""

import atexit
import json
import os
import signal
import sys
import traceback

# --- constants (values as in OpenPBS) ---------------------------------------------------------

# log severities (hook.h SEVERITY_LOG_*)
LOG_DEBUG = 0x0005
LOG_WARNING = 0x0006
LOG_ERROR = 0x0007
# log event classes (log.h PBSEVENT_*), also accepted by logmsg
EVENT_ERROR = 0x0001
EVENT_SYSTEM = 0x0002
EVENT_ADMIN = 0x0004
EVENT_JOB = 0x0008
EVENT_JOB_USAGE = 0x0010
EVENT_SECURITY = 0x0020
EVENT_SCHED = 0x0040
EVENT_DEBUG = 0x0080
EVENT_DEBUG2 = 0x0100
EVENT_RESV = 0x0200
EVENT_DEBUG3 = 0x0400
EVENT_DEBUG4 = 0x0800
EVENT_FORCE = 0x8000

# event types (hook.h HOOK_EVENT_*)
QUEUEJOB = 0x01
MODIFYJOB = 0x02
RESVSUB = 0x04
MOVEJOB = 0x08
RUNJOB = 0x10
PROVISION = 0x20
EXECJOB_BEGIN = 0x40
EXECJOB_PROLOGUE = 0x80
EXECJOB_EPILOGUE = 0x100
EXECJOB_END = 0x200
EXECJOB_PRETERM = 0x400
EXECJOB_LAUNCH = 0x800
EXECHOST_PERIODIC = 0x1000
EXECHOST_STARTUP = 0x2000
EXECJOB_ATTACH = 0x4000
PERIODIC = 0x8000
RESV_END = 0x10000
EXECJOB_RESIZE = 0x20000
EXECJOB_ABORT = 0x40000
EXECJOB_POSTSUSPEND = 0x80000
EXECJOB_PRERESUME = 0x100000
MANAGEMENT = 0x200000
MODIFYVNODE = 0x400000

# vnode states (pbs_nodes.h INUSE_*)
ND_FREE = 0x00
ND_OFFLINE = 0x01
ND_DOWN = 0x02
ND_DELETED = 0x04
ND_UNRESOLVABLE = 0x08
ND_JOBBUSY = 0x10
ND_STALE = 0x20
ND_JOB_EXCLUSIVE = 0x40
ND_BUSY = 0x80
ND_STATE_UNKNOWN = 0x100
ND_NEEDS_HELLOSVR = 0x200
ND_INIT = 0x400
ND_PROV = 0x800
ND_WAIT_PROV = 0x1000
ND_RESV_EXCLUSIVE = 0x2000
ND_RESVEXCL = 0x2000
ND_OFFLINE_BY_MOM = 0x4000
ND_MARKEDDOWN = 0x8000
ND_NEED_ADDRS = 0x10000
ND_MAINTENANCE = 0x20000
ND_SLEEP = 0x40000
ND_NEED_CREDENTIALS = 0x80000

_EVENT_TYPES = {
    "queuejob": QUEUEJOB, "modifyjob": MODIFYJOB, "resvsub": RESVSUB, "movejob": MOVEJOB,
    "runjob": RUNJOB, "provision": PROVISION, "periodic": PERIODIC, "resv_end": RESV_END,
    "execjob_begin": EXECJOB_BEGIN, "execjob_prologue": EXECJOB_PROLOGUE,
    "execjob_epilogue": EXECJOB_EPILOGUE, "execjob_end": EXECJOB_END,
    "execjob_preterm": EXECJOB_PRETERM, "execjob_launch": EXECJOB_LAUNCH,
    "exechost_periodic": EXECHOST_PERIODIC, "exechost_startup": EXECHOST_STARTUP,
    "execjob_attach": EXECJOB_ATTACH, "execjob_resize": EXECJOB_RESIZE,
    "execjob_abort": EXECJOB_ABORT,
}

# Which event parameters exist for which event type (the mom hook events this stand-in serves).
_JOB_EVENTS = (EXECJOB_BEGIN, EXECJOB_PROLOGUE, EXECJOB_EPILOGUE, EXECJOB_END, EXECJOB_PRETERM,
               EXECJOB_LAUNCH, EXECJOB_ATTACH, EXECJOB_RESIZE, EXECJOB_ABORT)
_PARAMS = {t: ("job", "vnode_list") for t in _JOB_EVENTS}
_PARAMS[EXECHOST_PERIODIC] = ("vnode_list", "job_list")
_PARAMS[EXECHOST_STARTUP] = ("vnode_list",)
_PARAMS[PERIODIC] = ()


# --- exceptions (pbs.v1._exc_types) ------------------------------------------------------------

class PBSError(RuntimeError):
    pass


class EventIncompatibleError(PBSError):
    pass


class UnsetAttributeNameError(PBSError):
    pass


class BadAttributeValueTypeError(PBSError):
    pass


class BadAttributeValueError(PBSError):
    pass


# --- recorded results --------------------------------------------------------------------------

_RESULT = {"outcome": "none", "reject_msg": None, "ecode": None, "logs": [], "job_logs": [],
           "vnodes": {}, "job_actions": [], "traceback": None}
_WRITTEN = [False]


def _write_result():
    if _WRITTEN[0]:
        return
    _WRITTEN[0] = True
    path = os.environ.get("PBS_STANDIN_RESULT")
    vnodes = {}
    try:
        ev = _EVENT[0]
        if ev is not None and "vnode_list" in ev._param:
            for name, v in ev._param["vnode_list"].items():
                vnodes[name] = {"state": v._attrs.get("state"), "comment": v._attrs.get("comment"),
                                "set": list(v._set)}
    except Exception:
        pass
    _RESULT["vnodes"] = vnodes
    if path:
        with open(path, "w") as f:
            json.dump(_RESULT, f, indent=1, sort_keys=True)


atexit.register(_write_result)


def _excepthook(etype, value, tb):
    if etype is not SystemExit:
        _RESULT["outcome"] = "exception"
        _RESULT["traceback"] = "".join(traceback.format_exception(etype, value, tb))
        _write_result()
        sys.__excepthook__(etype, value, tb)
        os._exit(254)


sys.excepthook = _excepthook


def _on_alarm(signum, frame):
    _RESULT["outcome"] = "alarm"
    _RESULT["logs"].append([LOG_ERROR, "alarm call while running %s hook" %
                            (_EVENT[0].hook_name if _EVENT[0] else "?")])
    _write_result()
    os._exit(253)


# --- objects -----------------------------------------------------------------------------------

_VNODE_ATTRS = ("name", "state", "comment", "ntype", "sharing", "resources_available",
                "resources_assigned", "pcpus", "jobs", "queue", "Mom", "Port", "priority",
                "resv_enable", "no_multinode_jobs", "in_multivnode_host", "current_aoe",
                "power_provisioning", "current_eoe", "topology_info", "vnode_pool",
                "last_state_change_time", "last_used_time", "maintenance_jobs", "license")


class vnode(object):
    """pbs.vnode: attribute access like the real one (unknown names raise)."""

    def __init__(self, name, attrs=None):
        object.__setattr__(self, "_attrs", {"name": name, "state": None, "comment": None})
        object.__setattr__(self, "_set", [])
        if attrs:
            self._attrs.update(attrs)

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        if key not in _VNODE_ATTRS:
            raise UnsetAttributeNameError("vnode attribute '%s' not found" % key)
        return self._attrs.get(key)

    def __setattr__(self, key, value):
        if key not in _VNODE_ATTRS:
            raise UnsetAttributeNameError("vnode attribute '%s' not found" % key)
        if key == "name":
            raise BadAttributeValueError("vnode name is read-only")
        if key == "state" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise BadAttributeValueTypeError("vnode state must be an int (pbs.ND_*), got %r"
                                             % (value,))
        if key == "state" and value & ~0xFFFFF:
            raise BadAttributeValueError("bad vnode state %r" % (value,))
        if key == "comment" and value is not None and not isinstance(value, str):
            raise BadAttributeValueTypeError("vnode comment must be a str, got %r" % (value,))
        self._attrs[key] = value
        if key not in self._set:
            self._set.append(key)

    def __str__(self):
        return self._attrs["name"]


class vnode_list(dict):
    """The event's vnode list: a dict of vnode name -> pbs.vnode."""

    def __setitem__(self, key, value):
        if not isinstance(value, vnode):
            raise BadAttributeValueTypeError("vnode_list values must be pbs.vnode objects")
        dict.__setitem__(self, key, value)


class pbs_resource(dict):
    pass


class job(object):
    def __init__(self, spec):
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_ms", bool(spec.get("in_ms_mom", True)))

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        if key == "Resource_List":
            return pbs_resource(self._spec.get("Resource_List", {}))
        if key in ("id", "euser", "egroup", "exec_vnode", "exec_host", "run_count", "queue",
                   "Job_Name", "Job_Owner", "Exit_status", "session_id", "resources_used"):
            return self._spec.get(key)
        raise UnsetAttributeNameError("job attribute '%s' not found" % key)

    def __setattr__(self, key, value):
        raise BadAttributeValueError("job attribute '%s' cannot be set in this stand-in" % key)

    def in_ms_mom(self):
        return self._ms

    def rerun(self):
        _RESULT["job_actions"].append(["rerun", self._spec.get("id")])

    def delete(self):
        _RESULT["job_actions"].append(["delete", self._spec.get("id")])

    def __str__(self):
        return str(self._spec.get("id"))


class _event(object):
    def __init__(self, spec):
        etype = _EVENT_TYPES[spec["type"]]
        object.__setattr__(self, "type", etype)
        object.__setattr__(self, "hook_name", spec.get("hook_name", "msr_restore"))
        object.__setattr__(self, "hook_type", "site")
        object.__setattr__(self, "requestor", "pbs_mom")
        object.__setattr__(self, "requestor_host", spec.get("local_nodename", "localhost"))
        object.__setattr__(self, "user", "pbsadmin")
        params = {}
        allowed = _PARAMS.get(etype, ())
        if "job" in allowed:
            params["job"] = job(spec.get("job") or {"id": "0.server"})
        if "vnode_list" in allowed:
            vl = vnode_list()
            for name, attrs in (spec.get("vnode_list") or {}).items():
                vl[name] = vnode(name, attrs)
            params["vnode_list"] = vl
        if "job_list" in allowed:
            params["job_list"] = dict((jid, job(dict(js, id=jid)))
                                      for jid, js in (spec.get("job_list") or {}).items())
        object.__setattr__(self, "_param", params)

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        if key in self._param:
            return self._param[key]
        raise EventIncompatibleError("event parameter '%s' not available for this event" % key)

    def __setattr__(self, key, value):
        raise BadAttributeValueError("event attribute '%s' is read-only" % key)

    def accept(self, ecode=0):
        _RESULT["outcome"] = "accept"
        _RESULT["ecode"] = ecode
        raise SystemExit(str(ecode))

    def reject(self, emsg="", ecode=255):
        _RESULT["outcome"] = "reject"
        _RESULT["reject_msg"] = emsg
        _RESULT["ecode"] = ecode
        raise SystemExit(str(ecode))


_EVENT = [None]
_SPEC = {}


def _load_spec():
    path = os.environ.get("PBS_STANDIN_EVENT")
    if not path:
        return {"type": "execjob_prologue"}
    with open(path) as f:
        return json.load(f)


_SPEC = _load_spec()
_EVENT[0] = _event(_SPEC)
if _SPEC.get("alarm"):
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(_SPEC["alarm"]))


# --- module functions ----------------------------------------------------------------------------

hook_config_filename = os.environ.get("PBS_HOOK_CONFIG_FILE")


def event():
    return _EVENT[0]


def get_local_nodename():
    return _SPEC.get("local_nodename", "localhost")


def get_local_host_name():
    return get_local_nodename()


_LEVELS = (LOG_DEBUG, LOG_WARNING, LOG_ERROR, EVENT_ERROR, EVENT_SYSTEM, EVENT_ADMIN, EVENT_JOB,
           EVENT_JOB_USAGE, EVENT_SECURITY, EVENT_SCHED, EVENT_DEBUG, EVENT_DEBUG2, EVENT_RESV,
           EVENT_DEBUG3, EVENT_DEBUG4, EVENT_FORCE)


def logmsg(level, msg):
    if not isinstance(level, int) or level not in _LEVELS:
        raise ValueError("logmsg: bad log level %r" % (level,))
    if not isinstance(msg, str):
        raise TypeError("logmsg: message must be a str")
    _RESULT["logs"].append([level, msg])
    name = {LOG_DEBUG: "DEBUG", LOG_WARNING: "WARNING", LOG_ERROR: "ERROR"}.get(level, level)
    if os.environ.get("PBS_STANDIN_VERBOSE"):
        sys.stderr.write("pbs.logmsg %s %s\n" % (name, msg))


def logjobmsg(jobid, msg):
    if not isinstance(msg, str):
        raise TypeError("logjobmsg: message must be a str")
    _RESULT["job_logs"].append([str(jobid), msg])
