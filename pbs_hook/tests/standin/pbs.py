# -*- coding: utf-8 -*-
"""A stand-in for the `pbs` module a PBS hook imports, for running hooks under plain python3.

It follows the real OpenPBS 23.06 module (src/lib/Libpython and src/modules/python/pbs/v1) for the
parts a mom hook uses, and where a live OpenPBS 23.06.06 was seen to behave in a way the API
does not say, it does what the live one did (pbs_hook/tests/live/ checks these against a real
server with the same probe hook it runs here):

- the integer constants with their real values (event types from hook.h, vnode states from
  pbs_nodes.h, log severities from hook.h);
- pbs.event(): .type, .hook_name, .hook_type, .requestor, .requestor_host, and per event type
  .job, .vnode_list, .job_list; reading a parameter the event type does not have raises
  pbs.EventIncompatibleError (an AttributeError, as in pbs.v1._exc_types);
- event.accept(ecode=0) and event.reject(emsg="", ecode=255) end the hook by raising
  SystemExit(str(ecode));
- e.vnode_list and e.job_list are plain dicts: nothing checks what is assigned to them;
- in mom events (execjob_*, exechost_*) every vnode of e.vnode_list has state and comment None:
  the mom does not know them. Only the server's own events (pbs.PERIODIC) carry them;
- pbs.vnode(name) objects: unknown attribute names raise UnsetAttributeNameError; comment = None
  reads back '' (the attribute descriptor turns None into "unset");
- pbs.server(): in a mom hook it connects to the server and returns None when it cannot;
  .vnode(name) is the server's view of the vnode (state, comment), None for an unknown vnode;
- in the server's own events sys.stdout and sys.stderr are None (pbs_server has neither);
- job objects: .id, .euser, .egroup, .exec_vnode, .run_count, .Resource_List[...],
  .in_ms_mom() ("True", a str, on the mother superior; False on a sister), .rerun(), .delete();
- job.resources_used is a plain dict: any name can be set, the module checks nothing. The server
  applies what an execjob_epilogue hook set there (qstat -x -f, the accounting E record), and
  drops the job's whole resources_used update (walltime too, "unable to update attribute
  resources_used.NAME in job_obit") when one name is not a resource it defines; what is set in
  execjob_end never reaches it. The job's comment is not sent from a mom on Linux (OpenPBS sends
  it only on Windows), so this stand-in refuses to set it, as every other job attribute;
- pbs.logmsg(level, msg), pbs.logjobmsg(jobid, msg), pbs.get_local_nodename(),
  pbs.hook_config_filename (from env PBS_HOOK_CONFIG_FILE, None when unset), pbs.pbs_conf
  (PBS_HOME from the event's "pbs_home", else /var/spool/pbs).

The test harness describes the event in a JSON file named by PBS_STANDIN_EVENT:

    {"type": "execjob_prologue", "hook_name": "msr_restore_begin", "alarm": 30,
     "local_nodename": "node1",
     "job": {"id": "42.server", "euser": "alice", "egroup": "users", "exec_vnode": "(node1:ncpus=4)",
             "run_count": 1, "in_ms_mom": true, "Resource_List": {"ncpus": 4}},
     "vnode_list": ["node1"],
     "job_list": {"42.server": {...job...}},
     "server_vnodes": {"node1": {"state": 0, "comment": null}},
     "server_reachable": true, "pbs_home": "/var/spool/pbs",
     "logmsg_error": null}

vnode_list names the event's vnodes (a dict is accepted: in mom events its values are ignored,
the mom knows nothing of them); server_vnodes is the server's view, what pbs.server().vnode() and
the server's own events see (default: every vnode of vnode_list free, no comment);
server_reachable false makes pbs.server() return None; logmsg_error makes pbs.logmsg raise
SystemError with that text (what a PBS built for Python 3.11 without PY_SSIZE_T_CLEAN does).

The harness reads what the hook did from the JSON file named by PBS_STANDIN_RESULT, written when
the hook process ends: {"outcome": "accept"|"reject"|"none"|"exception"|"alarm", "reject_msg",
"logs": [[level, msg]], "job_logs": [[jobid, msg]], "vnodes": {name: {"state", "comment",
"set": [attribute names the hook set]}}, "job_actions": [...], "job_resources_used": {the event
job's resources_used as the hook left it}, "traceback"}. "state" and "comment"
there are the values the hook set (None when it set nothing), what the server would apply.

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

# Which event parameters exist for which event type (the events this stand-in serves).
_JOB_EVENTS = (EXECJOB_BEGIN, EXECJOB_PROLOGUE, EXECJOB_EPILOGUE, EXECJOB_END, EXECJOB_PRETERM,
               EXECJOB_LAUNCH, EXECJOB_ATTACH, EXECJOB_RESIZE, EXECJOB_ABORT)
_MOM_EVENTS = _JOB_EVENTS + (EXECHOST_PERIODIC, EXECHOST_STARTUP)
_PARAMS = {t: ("job", "vnode_list") for t in _JOB_EVENTS}
_PARAMS[EXECHOST_PERIODIC] = ("vnode_list", "job_list")
_PARAMS[EXECHOST_STARTUP] = ("vnode_list",)
_PARAMS[PERIODIC] = ("vnode_list",)


# --- exceptions (pbs.v1._exc_types) ------------------------------------------------------------

class EventIncompatibleError(AttributeError):
    pass


class UnsetAttributeNameError(Exception):
    pass


class BadAttributeValueTypeError(Exception):
    pass


class BadAttributeValueError(Exception):
    pass


class UnsetResourceNameError(Exception):
    pass


class BadResourceValueTypeError(Exception):
    pass


class BadResourceValueError(Exception):
    pass


# --- recorded results --------------------------------------------------------------------------

_RESULT = {"outcome": "none", "reject_msg": None, "ecode": None, "logs": [], "job_logs": [],
           "vnodes": {}, "job_actions": [], "job_resources_used": {}, "traceback": None}
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
                if not isinstance(v, vnode):
                    continue
                setv = object.__getattribute__(v, "_set")
                vals = object.__getattribute__(v, "_set_values")
                vnodes[name] = {"state": vals.get("state"), "comment": vals.get("comment"),
                                "set": list(setv)}
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
        if sys.__stderr__ is not None:
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
    """pbs.vnode: attribute access like the real one (unknown names raise; None unsets)."""

    def __init__(self, name, attrs=None):
        object.__setattr__(self, "_attrs", {"name": name, "state": None, "comment": None})
        object.__setattr__(self, "_set", [])
        object.__setattr__(self, "_set_values", {})
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
        if key == "state" and value is not None and \
                not (isinstance(value, int) and not isinstance(value, bool)):
            raise BadAttributeValueTypeError("vnode state must be an int (pbs.ND_*), got %r"
                                             % (value,))
        if key == "comment" and value is not None and not isinstance(value, str):
            raise BadAttributeValueTypeError("vnode comment must be a str, got %r" % (value,))
        # In a hook, None means "unset": the real descriptor stores '' instead.
        stored = "" if value is None else value
        self._attrs[key] = stored
        self._set_values[key] = stored
        if key not in self._set:
            self._set.append(key)

    def __str__(self):
        return self._attrs["name"]


class pbs_resource(dict):
    pass


class job(object):
    def __init__(self, spec):
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_ms", bool(spec.get("in_ms_mom", True)))
        used = pbs_resource(spec.get("resources_used") or {})
        object.__setattr__(self, "_resources_used", used)
        if str(spec.get("id")) == str((_SPEC.get("job") or {}).get("id")):
            _RESULT["job_resources_used"] = used  # what the hook leaves there, recorded at exit

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        if key == "Resource_List":
            return pbs_resource(self._spec.get("Resource_List", {}))
        if key == "resources_used":
            return self._resources_used
        if key in ("id", "euser", "egroup", "exec_vnode", "exec_host", "run_count", "queue",
                   "Job_Name", "Job_Owner", "Exit_status", "session_id"):
            return self._spec.get(key)
        raise UnsetAttributeNameError("job attribute '%s' not found" % key)

    def __setattr__(self, key, value):
        raise BadAttributeValueError("job attribute '%s' cannot be set in this stand-in" % key)

    def in_ms_mom(self):
        # The real one gives the string "True" on the mother superior (read from the mom's
        # hook input file) and the bool False on a sister.
        return "True" if self._ms else False

    def rerun(self):
        _RESULT["job_actions"].append(["rerun", self._spec.get("id")])

    def delete(self):
        _RESULT["job_actions"].append(["delete", self._spec.get("id")])

    def __str__(self):
        return str(self._spec.get("id"))


def _server_view(name):
    """The server's state and comment of a vnode: from server_vnodes, else free with none."""
    view = (_SPEC.get("server_vnodes") or {}).get(name)
    if view is None:
        if name not in _vnode_names():
            return None
        view = {}
    return {"state": view.get("state", ND_FREE), "comment": view.get("comment")}


def _vnode_names():
    names = _SPEC.get("vnode_list") or []
    return list(names.keys()) if isinstance(names, dict) else list(names)


class _event(object):
    def __init__(self, spec):
        etype = _EVENT_TYPES[spec["type"]]
        object.__setattr__(self, "type", etype)
        object.__setattr__(self, "hook_name", spec.get("hook_name", "msr_restore"))
        object.__setattr__(self, "hook_type", "site")
        object.__setattr__(self, "requestor", "pbs_mom" if etype in _MOM_EVENTS else "PBS_Server")
        object.__setattr__(self, "requestor_host", spec.get("local_nodename", "localhost"))
        object.__setattr__(self, "user", "pbsadmin")
        params = {}
        allowed = _PARAMS.get(etype, ())
        if "job" in allowed:
            params["job"] = job(spec.get("job") or {"id": "0.server"})
        if "vnode_list" in allowed:
            vl = {}
            if etype in _MOM_EVENTS:
                # The mom knows the names of the vnodes, not their state or comment.
                for name in _vnode_names():
                    vl[name] = vnode(name)
            else:
                names = set(_vnode_names()) | set(spec.get("server_vnodes") or {})
                for name in sorted(names):
                    vl[name] = vnode(name, _server_view(name))
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
        raise EventIncompatibleError('"%s" not found in self._param' % key)

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


class _server(object):
    """pbs.server(): only what a mom hook can ask of it here (vnodes)."""

    def vnode(self, name):
        view = _server_view(name)
        if view is None:
            return None
        return vnode(name, view)


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
if _EVENT[0].type not in _MOM_EVENTS:
    # pbs_server runs hooks in its own interpreter, which has no stdout or stderr.
    sys.stdout = None
    sys.stderr = None


# --- module functions ----------------------------------------------------------------------------

hook_config_filename = os.environ.get("PBS_HOOK_CONFIG_FILE")
# /etc/pbs.conf as the module reads it; PBS_HOME holds mom_priv/hooks/resourcedef, the mom's copy
# of the server's custom resources.
pbs_conf = {"PBS_HOME": _SPEC.get("pbs_home") or "/var/spool/pbs",
            "PBS_EXEC": _SPEC.get("pbs_exec") or "/opt/pbs"}


def event():
    return _EVENT[0]


def server():
    if not _SPEC.get("server_reachable", True):
        return None  # pbs_statobj() could not connect
    return _server()


def get_local_nodename():
    return _SPEC.get("local_nodename", "localhost")


def get_local_host_name():
    return get_local_nodename()


_LEVELS = (LOG_DEBUG, LOG_WARNING, LOG_ERROR, EVENT_ERROR, EVENT_SYSTEM, EVENT_ADMIN, EVENT_JOB,
           EVENT_JOB_USAGE, EVENT_SECURITY, EVENT_SCHED, EVENT_DEBUG, EVENT_DEBUG2, EVENT_RESV,
           EVENT_DEBUG3, EVENT_DEBUG4, EVENT_FORCE)


def logmsg(level, msg):
    if _SPEC.get("logmsg_error"):
        raise SystemError(_SPEC["logmsg_error"])
    if not isinstance(level, int) or level not in _LEVELS:
        raise ValueError("logmsg: bad log level %r" % (level,))
    if not isinstance(msg, str):
        raise TypeError("logmsg: message must be a str")
    _RESULT["logs"].append([level, msg])
    name = {LOG_DEBUG: "DEBUG", LOG_WARNING: "WARNING", LOG_ERROR: "ERROR"}.get(level, level)
    if os.environ.get("PBS_STANDIN_VERBOSE") and sys.__stderr__ is not None:
        sys.__stderr__.write("pbs.logmsg %s %s\n" % (name, msg))


def logjobmsg(jobid, msg):
    if _SPEC.get("logmsg_error"):
        raise SystemError(_SPEC["logmsg_error"])
    if not isinstance(msg, str):
        raise TypeError("logjobmsg: message must be a str")
    _RESULT["job_logs"].append([str(jobid), msg])
