# -*- coding: utf-8 -*-
"""msr-restore PBS hook: snapshot MSRs when a job starts on a host, restore them when it ends,
and keep hosts whose registers drifted out of service.

Runs inside PBS (OpenPBS / PBS Professional) as a site hook, under PBS's own Python 3 (3.6 or
later), once per event:

  execjob_prologue (and execjob_begin if the site adds it)
        msrsave job begin JOBID
        Failure: by default the local vnodes go offline and the event is rejected (job requeued).
  execjob_epilogue, execjob_end
        msrsave job end JOBID  (idempotent: the second call, or a call for a job whose prologue
        failed or was rejected, ends cleanly with a note)
        Failure: the local vnodes go offline (PBS only logs epilogue/end errors); the event is
        accepted, so the user's job keeps its exit status.
  exechost_periodic
        msrsave job reconcile --running-jobs (the mom's e.job_list): ends the jobs the mom
        forgot. Then, only when no job is on the host, msrsave check BASELINE. Drift: the local
        vnodes go offline (on_drift = drain) with a comment naming the drift. Clean: vnodes this
        hook took offline come back.
  exechost_startup
        msrsave allowlist load --auto (if load_allowlist), msrsave save BASELINE.

All MSR logic is in msrsave, and so is the msr-restore configuration: the hook passes its
msr-restore keys (state_dir, baseline, on_drift, root, ...) to every msrsave call as
--set KEY=VALUE and asks msrsave (config show, job status) for what it needs to know; it never
reads msrsave's files. It runs msrsave with --format json and a timeout below the hook's alarm,
reads its JSON and talks to PBS. No exception leaves the hook.

Ownership of "offline": in mom events the pbs module gives vnode state and comment None, so the
hook records the vnodes IT took offline in a marker file (HOOK_STATE_DIR/offline.json, with the
comment it set) and asks the server (pbs.server().vnode()) for a vnode's real state and comment
before touching it. An offline it does not hold (an admin's) is never touched; exechost_periodic
brings a held vnode back only if the check is clean and the server still shows the hook's comment
(an admin who changes the comment takes the node over).

Outside PBS, `python3 msr_restore_hook.py --check-config FILE [--msrsave PATH]` validates a hook
config file (its msr-restore keys by msrsave's `config show`) and prints the effective settings
(used by install.sh).
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback

try:
    import pbs
except ImportError:  # outside PBS: only the --check-config command line is available
    pbs = None

START = time.time()

HOOK_NAME = "msr-restore"
COMMENT_PREFIX = "msr-restore: "
# Keep vnode comments short enough for pbsnodes output and the server's attribute limits.
MAX_COMMENT = 240
# The string resource the end hook records what the jobs changed in (resources_used.msr_changed;
# install.sh creates it), and the longest value it sets.
JOB_RESOURCE = "msr_changed"
MAX_JOB_RECORD = 1000
DEFAULT_PBS_HOME = "/var/spool/pbs"
# Seconds kept between the end of the last msrsave call and the hook's alarm, for PBS to get
# the vnode changes and the accept/reject back.
ALARM_MARGIN = 3.0

# The hook's own keys and their built-in defaults. Every other key of the hook config is an
# msr-restore.conf key (state_dir, baseline, on_drift, root, backend, allowlist, job_metrics,
# lock_timeout, ...): the hook passes it to every msrsave call as --set KEY=VALUE and leaves it
# to msrsave to judge (a bad key or value is msrsave's error, naming it); null or "": not passed.
DEFAULTS = {
    "msrsave": "/usr/bin/msrsave",
    "msr_restore_conf": None,  # None: msrsave's own ($MSR_RESTORE_CONFIG, else /etc/...)
    "alarm": 30,  # the hooks' qmgr alarm (install.sh sets it from here)
    "check_freq": 120,  # the exechost_periodic hook's qmgr freq (install.sh sets it from here)
    "timeout": 20,  # seconds one msrsave call may take; must be below alarm
    "on_snapshot_failure": "offline",  # offline|reject|accept
    "on_restore_failure": "offline",  # offline|log
    "load_allowlist": False,  # exechost_startup: msrsave allowlist load --auto
    "baseline_on_startup": True,  # exechost_startup: msrsave save BASELINE
    "hook_state_dir": "/var/lib/msr-restore/pbs_hook",  # offline marker, ended-job records
    "prometheus": "",  # non-empty: periodic check writes this Prometheus text file
}
# Keys earlier versions of the hook had: ignored, with the "unknown key" warning.
RETIRED_KEYS = {
    "stale_job_grace": "msrsave job reconcile ends a job the mom no longer runs once it has "
                       "been registered for msrsave's own grace period, 120 s",
}

CHOICES = {
    "on_snapshot_failure": ("offline", "reject", "accept"),
    "on_restore_failure": ("offline", "log"),
}
# The hook's string keys are all absolute paths.
STRING_KEYS = ("msrsave", "msr_restore_conf", "hook_state_dir", "prometheus")
NUMBER_KEYS = ("alarm", "check_freq", "timeout")
BOOL_KEYS = ("load_allowlist", "baseline_on_startup")


# ---------------------------------------------------------------------------------------------
# Logging: pbs.logmsg inside PBS, stderr on the command line.

class Log(object):
    def __init__(self, prefix):
        self.prefix = prefix
        self.lines = []  # (level name, message), for --check-config

    def _emit(self, level, msg):
        """Never raises: a hook that cannot log must still accept or reject."""
        try:
            text = "%s: %s" % (self.prefix, msg)
            self.lines.append((level, msg))
            if pbs is not None and not CLI_MODE:
                pbslevel = {"debug": pbs.LOG_DEBUG, "warning": pbs.LOG_WARNING,
                            "error": pbs.LOG_ERROR}.get(level, pbs.LOG_DEBUG)
                try:
                    pbs.logmsg(pbslevel, text)
                except Exception:
                    write_stderr("%s: %s\n" % (level, text))
            elif level != "debug":
                write_stderr("%s: %s\n" % (level, text))
        except Exception:
            pass

    def debug(self, msg):
        self._emit("debug", msg)

    def warning(self, msg):
        self._emit("warning", msg)

    def error(self, msg):
        self._emit("error", msg)


def write_stderr(text):
    """stderr, where there is one: pbs_server runs hooks with sys.stderr None."""
    stream = sys.stderr if sys.stderr is not None else sys.__stderr__
    if stream is None:
        return
    try:
        stream.write(text)
    except Exception:
        pass


CLI_MODE = False
LOG = Log(HOOK_NAME)


# ---------------------------------------------------------------------------------------------
# Configuration

def validate(cfg, source, log):
    """Check the hook's own keys (types and choices); a bad value is logged and replaced by its
    default. The msr-restore keys are msrsave's to judge."""
    good = dict(cfg)
    for key in list(good):
        value = good[key]
        default = DEFAULTS.get(key)
        if key in STRING_KEYS:
            if value is None and default is None:
                continue
            if not isinstance(value, str):
                log.error("%s: %s must be a string, got %r; using %r"
                          % (source, key, value, default))
                good[key] = default
            elif value and not os.path.isabs(value):
                log.error("%s: %s must be an absolute path, got %r; using %r"
                          % (source, key, value, default))
                good[key] = default
        elif key in NUMBER_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                log.error("%s: %s must be a positive number of seconds, got %r; using %r"
                          % (source, key, value, default))
                good[key] = default
        elif key in BOOL_KEYS:
            if not isinstance(value, bool):
                log.error("%s: %s must be true or false, got %r; using %r"
                          % (source, key, value, default))
                good[key] = default
        elif key in CHOICES:
            if isinstance(value, str):
                value = value.strip().lower()
            if value not in CHOICES[key]:
                log.error("%s: %s must be one of %s, got %r; using %r"
                          % (source, key, "|".join(CHOICES[key]), cfg[key], default))
                good[key] = default
            else:
                good[key] = value
    return good


def set_value(value):
    """A hook config value as msr-restore.conf would spell it, for --set KEY=VALUE."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ":".join(value)  # allowlist_dir: several directories
    if isinstance(value, str):
        return value
    return json.dumps(value)  # msrsave says what is wrong with it


def load_config(path, log):
    """Effective hook settings: built-in defaults < hook config file; cfg["set"] holds the
    msr-restore keys of the file as KEY=VALUE arguments for msrsave's --set.

    A missing, unreadable or malformed hook config is logged once, clearly, and the built-in
    defaults apply (safe: restore-failures and drift take the node offline)."""
    cfg = dict(DEFAULTS)
    file_cfg = {}
    if not path:
        log.warning("no hook config file (PBS_HOOK_CONFIG_FILE unset: import one with "
                    "'qmgr -c \"import hook H application/x-config default msr_restore_hook.json\"'); "
                    "using built-in defaults")
    else:
        try:
            with open(path) as f:
                text = f.read()
        except (IOError, OSError) as err:
            log.error("cannot read hook config %s: %s; using built-in defaults" % (path, err))
            text = None
        if text is not None:
            try:
                file_cfg = json.loads(text)
            except ValueError as err:
                log.error("hook config %s is not valid JSON (%s); using built-in defaults"
                          % (path, err))
                file_cfg = {}
            if not isinstance(file_cfg, dict):
                log.error("hook config %s must be a JSON object, got %s; using built-in defaults"
                          % (path, type(file_cfg).__name__))
                file_cfg = {}
    shared = []
    for key in sorted(file_cfg):
        if key.startswith("_") or key.startswith("#"):
            continue  # comment keys
        if key in RETIRED_KEYS:
            log.warning("hook config %s: unknown key %r ignored (%s)"
                        % (path, key, RETIRED_KEYS[key]))
            continue
        if key in DEFAULTS:
            cfg[key] = file_cfg[key]
            continue
        value = file_cfg[key]
        if value is None or value == "":
            continue  # msr-restore.conf's value (or msrsave's default) applies
        shared.append("%s=%s" % (key, set_value(value)))
    cfg = validate(cfg, "hook config %s" % path if path else "defaults", log)
    cfg["set"] = shared

    if cfg["timeout"] + ALARM_MARGIN > cfg["alarm"]:
        fixed = max(1.0, cfg["alarm"] - ALARM_MARGIN - 1)
        log.error("timeout %ss does not leave %ss before the hook alarm %ss; using %ss"
                  % (cfg["timeout"], ALARM_MARGIN, cfg["alarm"], fixed))
        cfg["timeout"] = fixed
    return cfg


def msr_restore_config(cfg, log):
    """msrsave's configuration in effect with the hook's overrides (`msrsave config show`):
    (the "config" object, None), or (None, why) when msrsave refuses the configuration (its
    message names the file line or the --set argument) or cannot be run."""
    res = run_msrsave(cfg, ["config", "show"], log)
    conf = res.data.get("config") if res.ok else None
    if isinstance(conf, dict):
        return conf, None
    return None, res.describe()


# ---------------------------------------------------------------------------------------------
# Running msrsave

class Outcome(object):
    """What one msrsave run gave: exit code, the JSON object (or None) and an error sentence
    when the run itself failed (missing binary, timeout, no JSON)."""

    def __init__(self, code=None, data=None, error=None):
        self.code = code
        self.data = data
        self.error = error

    @property
    def ok(self):
        return (self.error is None and self.code == 0 and isinstance(self.data, dict)
                and self.data.get("ok") is True)

    def describe(self):
        """One line saying what went wrong (or what happened), for logs and vnode comments:
        msrsave's own "error" when it gave one (it names the file, key, CPU or MSR)."""
        if self.error:
            return self.error
        d = self.data or {}
        if d.get("error"):
            return str(d["error"])
        parts = []
        restore = d.get("restore")
        if isinstance(restore, dict) and restore.get("failures"):
            fails = restore["failures"]
            named = []
            for f in fails[:3]:
                named.append("%s MSR %s%s: %s" % (
                    where_of(f), f.get("msr"),
                    " (%s)" % f["name"] if f.get("name") else "", f.get("error", "failed")))
            count = restore.get("failed") or len(fails)
            more = " and %d more" % (count - 3) if count > 3 else ""
            parts.append("%d register(s) not restored: %s%s" % (count, "; ".join(named), more))
        check = d.get("check")  # job end: what still differs after the restore
        if isinstance(check, dict) and check.get("clean") is False:
            drift = check.get("drift") or []
            parts.append("%d register(s) still differ from the snapshot after the restore%s"
                         % (len(drift), ": CPU %s MSR %s" % (drift[0].get("cpu"),
                                                             drift[0].get("msr"))
                            if drift else ""))
        if d.get("command") == "check" and d.get("clean") is False and d.get("summary"):
            parts.append(str(d["summary"]))
        parts.extend(notes_of(d))
        if not parts:
            parts.append("msrsave exited %s" % self.code)
        return "; ".join(parts)


def where_of(f):
    """Where a finding's register sits: "CPU 3", or "package 1 (CPU 56)" for a register a
    package (core, die) shares, which msrsave reports once for it."""
    if f.get("scope") not in (None, "thread") and f.get("domain"):
        return "%s (CPU %s)" % (f["domain"], f.get("cpu"))
    return "CPU %s" % f.get("cpu")


def notes_of(d):
    """msrsave's remarks: "note" (a string) and/or "notes" (a list)."""
    notes = []
    if d.get("note"):
        notes.append(str(d["note"]))
    if isinstance(d.get("notes"), list):
        notes.extend(str(n) for n in d["notes"] if n)
    return notes


def changed_of(d):
    """What the jobs had changed, per MSR, from a job end's or reconcile's "changed": a list of
    {"text": readable, "record": the same without spaces, for the job's record}."""
    out = []
    for c in d.get("changed") or []:
        if not isinstance(c, dict):
            continue
        msr, name, cpus, bits = c.get("msr"), c.get("name"), c.get("cpu_list"), c.get("bits")
        where, rwhere = "CPUs %s" % cpus, "cpus=%s" % cpus
        if c.get("scope") not in (None, "thread") and c.get("packages"):
            where = "packages %s (CPUs %s)" % (c["packages"], cpus)
            rwhere = "packages=%s" % c["packages"]
        out.append({"text": "%s%s on %s, bits %s" % (msr, " " + name if name else "", where, bits),
                    "record": "%s%s/%s/bits=%s" % (msr, "/" + name if name else "", rwhere, bits)})
    return out


def deadline(cfg):
    return START + cfg["alarm"] - ALARM_MARGIN


def msrsave_argv(cfg, args):
    """msrsave with the hook's msr-restore configuration: --config (msr_restore_conf) and a
    --set KEY=VALUE for each msr-restore key of the hook config."""
    argv = [cfg["msrsave"], "--format", "json"]
    if cfg.get("msr_restore_conf"):
        argv += ["--config", cfg["msr_restore_conf"]]
    for kv in cfg.get("set") or []:
        argv += ["--set", kv]
    return argv + list(args)


def run_msrsave(cfg, args, log):
    argv = msrsave_argv(cfg, args)
    left = deadline(cfg) - time.time()
    timeout = min(float(cfg["timeout"]), left)
    cmd = "msrsave " + " ".join(a for a in args[:2] if not a.startswith(("/", "-")))
    if timeout < 1:
        return Outcome(error="no time left before the hook alarm (%ss) to run %s"
                       % (cfg["alarm"], cmd))
    log.debug("running %s (timeout %.0fs)" % (" ".join(argv), timeout))
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True, start_new_session=True)
    except (OSError, ValueError) as err:
        return Outcome(error="cannot run msrsave %s: %s"
                       % (cfg["msrsave"], getattr(err, "strerror", None) or err))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        try:
            proc.communicate(timeout=2)
        except Exception:
            pass
        return Outcome(error="%s timed out after %.0fs and was killed" % (cmd, timeout))
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace").strip()
    data = parse_json_object(out)
    if data is None:
        lines = [l.strip() for l in err.splitlines() if l.strip()]
        errors = [l for l in lines if "error" in l.lower()]
        tail = (errors or lines or ["nothing on stderr"])[0 if errors else -1]
        return Outcome(code=proc.returncode,
                       error="%s printed no JSON object (exit %s; %s)"
                       % (cmd, proc.returncode, tail))
    return Outcome(code=proc.returncode, data=data)


def parse_json_object(text):
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
        return data if isinstance(data, dict) else None
    except ValueError:
        pass
    for line in reversed(text.splitlines()):  # tolerate stray lines before the object
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


# ---------------------------------------------------------------------------------------------
# Vnodes, the offline marker and the server's view
#
# In mom events (execjob_*, exechost_*) the real pbs module gives every vnode of e.vnode_list
# state and comment None: the mom does not know them. So the hook keeps its own record of the
# vnodes IT took offline, the marker HOOK_STATE_DIR/offline.json (per vnode: the comment it set,
# the reason, the event, the time), and before it touches a vnode it asks the server for the
# vnode's real state and comment (pbs.server().vnode(): one connection to the server, made only
# on a failure or for a vnode the marker holds):
#
# - an offline vnode the marker does not hold is someone else's (an admin's, PBS's): never
#   touched, never brought back;
# - a held vnode whose comment on the server is no longer the one the hook set was taken over
#   (an admin changed the comment): dropped from the marker, never touched again;
# - a held vnode that is no longer offline was brought back by someone: dropped from the marker;
# - in a job event, a new failure on a vnode the marker holds leaves the first reason (the root
#   cause, e.g. the begin's) on the vnode; the new one goes to the mom log and the job's log.

# A vnode the hook has just taken offline may still read as not offline on the server for a
# moment (the mom sends the change after the hook ends): held vnodes younger than this are not
# taken for "brought back by someone".
RECONCILE_GRACE = 60.0
# How long it may take to get the marker's lock before the hook goes on without it.
MARKER_LOCK_WAIT = 5.0


def local_vnode_names(e):
    """The vnodes of this host in e.vnode_list: the natural vnode (named after the host) and
    host[N] vnodes of multi-vnode hosts. Other hosts' vnodes of the job are left alone."""
    local = pbs.get_local_nodename()
    names = []
    for name in e.vnode_list.keys():
        if name == local or name.startswith(local + "["):
            names.append(name)
    return local, sorted(names)


def marker_path(cfg):
    return os.path.join(cfg["hook_state_dir"], "offline.json")


class MarkerLock(object):
    """flock on HOOK_STATE_DIR/offline.lock around a read-change-write of the marker: an
    epilogue, a prologue and the periodic hook may run at the same time on one host."""

    def __init__(self, cfg, log):
        self.cfg = cfg
        self.log = log
        self.fd = None

    def __enter__(self):
        path = os.path.join(self.cfg["hook_state_dir"], "offline.lock")
        try:
            if not os.path.isdir(self.cfg["hook_state_dir"]):
                os.makedirs(self.cfg["hook_state_dir"], 0o700)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            self.log.error("cannot open %s: %s; going on without the lock" % (path, err))
            return self
        end = time.time() + MARKER_LOCK_WAIT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except (IOError, OSError):
                if time.time() > end:
                    self.log.error("%s still locked after %.0fs; going on without the lock"
                                   % (path, MARKER_LOCK_WAIT))
                    return self
                time.sleep(0.05)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
        return False


def read_marker(cfg, log):
    """{vnode name: {"comment", "reason", "event", "time", "since"}} for the vnodes this hook
    holds offline; {} when there are none (or the marker cannot be read: said in the log)."""
    path = marker_path(cfg)
    try:
        with open(path) as f:
            data = json.load(f)
    except (IOError, OSError) as err:
        if getattr(err, "errno", None) != 2:
            log.error("cannot read offline marker %s: %s" % (path, err))
        return {}
    except ValueError as err:
        log.error("offline marker %s is not JSON (%s); ignoring it" % (path, err))
        return {}
    vnodes = data.get("vnodes") if isinstance(data, dict) else None
    if isinstance(vnodes, list):
        # an earlier version's marker: names and one reason, the comment was not recorded
        return dict((str(name), {"comment": None, "reason": data.get("reason", ""),
                                 "event": data.get("event", ""), "time": data.get("time", ""),
                                 "since": 0}) for name in vnodes)
    if isinstance(vnodes, dict):
        return dict((str(name), entry if isinstance(entry, dict) else {})
                    for name, entry in vnodes.items())
    log.error("offline marker %s is malformed; ignoring it" % path)
    return {}


def write_marker(cfg, held, log):
    """Record the vnodes this hook holds offline; none: no marker."""
    if not held:
        remove_marker(cfg, log)
        return
    path = marker_path(cfg)
    data = {"version": 2, "comment_prefix": COMMENT_PREFIX, "vnodes": held}
    try:
        if not os.path.isdir(cfg["hook_state_dir"]):
            os.makedirs(cfg["hook_state_dir"], 0o700)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except (IOError, OSError) as err:
        log.error("cannot write offline marker %s: %s (the vnodes stay offline until an admin "
                  "clears them)" % (path, err))


def remove_marker(cfg, log):
    try:
        os.unlink(marker_path(cfg))
    except OSError as err:
        if err.errno != 2:
            log.error("cannot remove offline marker %s: %s" % (marker_path(cfg), err))


def vnode_attr(v, name):
    try:
        return getattr(v, name)
    except Exception:
        return None


def is_offline(state):
    if state is None:
        return False
    try:
        return (int(state) & pbs.ND_OFFLINE) != 0
    except (TypeError, ValueError):
        return False


def server_view(cfg, name, log):
    """(state, comment) of vnode `name` on the server, or None when the server cannot be asked
    (unreachable, no time left before the alarm, unknown vnode): said in the log."""
    if deadline(cfg) - time.time() < 1:
        log.warning("no time left before the hook alarm to ask the server about vnode %s" % name)
        return None
    try:
        server = pbs.server()
        if server is None:
            log.warning("cannot connect to the PBS server to read vnode %s's state" % name)
            return None
        v = server.vnode(name)
        if v is None:
            log.warning("the PBS server does not know vnode %s" % name)
            return None
        comment = vnode_attr(v, "comment")
        return vnode_attr(v, "state"), (str(comment) if comment else None)
    except Exception as err:
        log.warning("cannot read vnode %s from the PBS server: %r" % (name, err))
        return None


def comment_is_ours(entry, comment):
    """Whether the server's comment is still the one this hook set (a marker from an earlier
    version has no comment recorded: then any comment of this hook counts)."""
    if comment is None:
        return False
    if entry.get("comment"):
        return comment == entry["comment"]
    return comment.startswith(COMMENT_PREFIX)


def young(entry):
    try:
        return time.time() - float(entry.get("since") or 0) < RECONCILE_GRACE
    except (TypeError, ValueError):
        return False


def take_offline(e, cfg, reason, event_name, log, reconcile=False):
    """Take every local vnode offline with a comment the hook owns, and hold it in the marker.

    An offline vnode the marker does not hold is left as it is (an admin's offline is never
    taken over). A vnode the marker holds keeps its first reason; with reconcile (the periodic
    check) the marker is first checked against the server: a vnode someone took over or brought
    back is dropped from it (and, brought back, taken offline anew for this reason)."""
    local, names = local_vnode_names(e)
    if not names:
        try:
            e.vnode_list[local] = pbs.vnode(local)
            names = [local]
        except Exception as err:
            log.error("cannot take %s offline: it is not in the event's vnode_list (%s): %s"
                      % (local, err, reason))
            return []
    comment = (COMMENT_PREFIX + reason)
    if len(comment) > MAX_COMMENT:
        comment = comment[:MAX_COMMENT - 3] + "..."
    held_now = []
    with MarkerLock(cfg, log):
        held = read_marker(cfg, log)
        changed = False
        for name in names:
            entry = held.get(name)
            if entry is not None and not reconcile:
                log.error("vnode %s stays offline for its first failure (%s); also: %s"
                          % (name, entry.get("reason"), reason))
                held_now.append(name)
                continue
            view = server_view(cfg, name, log)
            if entry is not None:
                if view is None:
                    held_now.append(name)
                    continue
                state, current = view
                if is_offline(state) and comment_is_ours(entry, current):
                    log.error("vnode %s stays offline: %s" % (name, reason))
                    held_now.append(name)
                    continue
                if not is_offline(state) and young(entry):
                    held_now.append(name)  # the server has not applied it yet
                    continue
                del held[name]
                changed = True
                if is_offline(state):
                    log.warning("vnode %s: comment is now %r, not this hook's: leaving the vnode "
                                "to whoever changed it; %s" % (name, current, reason))
                    continue
                log.warning("vnode %s was brought back while this hook held it offline"
                            % name)
            elif view is not None and is_offline(view[0]):
                log.error("vnode %s is already offline (comment %r), not by this hook: left as "
                          "it is; %s" % (name, view[1], reason))
                continue
            try:
                v = e.vnode_list[name]
                v.state = pbs.ND_OFFLINE
                v.comment = comment
            except Exception as err:
                log.error("cannot take vnode %s offline: %s" % (name, err))
                continue
            held[name] = {"comment": comment, "reason": reason, "event": event_name,
                          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "since": time.time()}
            changed = True
            held_now.append(name)
            log.error("vnode %s taken offline: %s" % (name, reason))
        if changed:
            write_marker(cfg, held, log)
    return held_now


def bring_back(e, cfg, log):
    """After a clean check: free the vnodes the marker holds, if the server still shows them
    offline with this hook's comment; drop the ones someone else took over or brought back."""
    with MarkerLock(cfg, log):
        held = read_marker(cfg, log)
        if not held:
            return
        before = len(held)
        for name in sorted(held):
            entry = held[name]
            if name not in e.vnode_list.keys():
                log.warning("vnode %s (taken offline by this hook) is not in vnode_list; left "
                            "as it is" % name)
                continue
            view = server_view(cfg, name, log)
            if view is None:
                log.warning("vnode %s stays offline until the server can be asked" % name)
                continue
            state, current = view
            if not is_offline(state):
                if young(entry):
                    continue
                log.warning("vnode %s was brought back already (it was offline for: %s)"
                            % (name, entry.get("reason")))
                del held[name]
                continue
            if not comment_is_ours(entry, current):
                log.warning("vnode %s: comment is now %r, not this hook's; leaving the vnode to "
                            "whoever changed it" % (name, current))
                del held[name]
                continue
            try:
                v = e.vnode_list[name]
                v.state = pbs.ND_FREE
                v.comment = None
            except Exception as err:
                log.error("cannot bring vnode %s back: %s" % (name, err))
                continue
            log.warning("vnode %s back in service: MSR check clean (it was offline for: %s)"
                        % (name, entry.get("reason")))
            del held[name]
        if len(held) != before:
            write_marker(cfg, held, log)


# ---------------------------------------------------------------------------------------------
# Jobs whose epilogue ended them: execjob_end (which runs after it on every host) has nothing
# left to do for them, and msrsave could only say "not registered" about them.

ENDED_DIR = "ended"
# Records the end hook never collected (mom killed between epilogue and end) go after this long.
ENDED_RECORD_TTL = 86400.0


def ended_record(cfg, job_id):
    if not job_id or "/" in job_id or job_id.startswith("."):
        return None
    return os.path.join(cfg["hook_state_dir"], ENDED_DIR, job_id)


def note_ended(cfg, job_id, log):
    path = ended_record(cfg, job_id)
    if path is None:
        return
    try:
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path), 0o700)
        with open(path, "w") as f:
            f.write("%d\n" % time.time())
    except (IOError, OSError) as err:
        log.debug("cannot record that job %s ended: %s" % (job_id, err))


def take_ended(cfg, job_id):
    """Whether the epilogue ended job_id on this host (and forget it)."""
    path = ended_record(cfg, job_id)
    if path is None:
        return False
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def prune_ended(cfg, log):
    base = os.path.join(cfg["hook_state_dir"], ENDED_DIR)
    try:
        names = os.listdir(base)
    except OSError:
        return
    now = time.time()
    for name in names:
        path = os.path.join(base, name)
        try:
            if now - os.stat(path).st_mtime > ENDED_RECORD_TTL:
                os.unlink(path)
                log.debug("forgot job %s: its end hook never ran here" % name)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Event handlers. Each ends by accepting or rejecting (SystemExit).

def job_log(e, msg):
    try:
        pbs.logjobmsg(e.job.id, "%s: %s" % (HOOK_NAME, msg))
    except Exception:
        pass


def job_resource_defined(log):
    """Whether the server defines JOB_RESOURCE as a string, from the copy of its resourcedef
    every mom keeps. A resources_used value the server does not know makes it drop the job's
    whole resources_used update (walltime, cput, mem: seen on OpenPBS 23.06), so the hook
    sets it only where install.sh created it."""
    try:
        home = pbs.pbs_conf.get("PBS_HOME") or DEFAULT_PBS_HOME
    except Exception:
        home = DEFAULT_PBS_HOME
    path = os.path.join(home, "mom_priv", "hooks", "resourcedef")
    try:
        with open(path) as f:
            for line in f:
                words = line.split()
                if words and words[0] == JOB_RESOURCE:
                    return "type=string" in words[1:]
    except (IOError, OSError) as err:
        log.debug("cannot read %s: %s" % (path, err))
    return False


def record_changed(e, changed, log):
    """What the jobs on this host changed, where admins look for what a job did: the job's log
    (tracejob) and, from the epilogue, resources_used.msr_changed (qstat -x -f, the accounting
    log's E record). A mom hook cannot set the job's comment on Linux: OpenPBS 23.06 sends it
    to the server only on Windows (mom_updates_bundle.c), so the hook does not try."""
    node = pbs.get_local_nodename()
    # On a shared host the change is the doing of any job that held it.
    job_log(e, "MSRs changed by the job(s) that held %s, put back: %s"
            % (node, "; ".join(c["text"] for c in changed)))
    if e.type != pbs.EXECJOB_EPILOGUE:
        return  # resources_used set in execjob_end never reaches the server
    if not job_resource_defined(log):
        log.debug("resource %s is not defined on the server (install.sh creates it): what job "
                  "%s changed is in its job log only" % (JOB_RESOURCE, e.job.id))
        return
    # Accounting records are space-separated key=value: a value without spaces stays one field.
    value = "%s:%s" % (node, ";".join(c["record"] for c in changed))
    if len(value) > MAX_JOB_RECORD:
        value = value[:MAX_JOB_RECORD - 3] + "..."
    try:
        e.job.resources_used[JOB_RESOURCE] = value
    except Exception as err:
        log.debug("cannot set resources_used.%s of job %s: %r" % (JOB_RESOURCE, e.job.id, err))


def on_job_begin(e, cfg, log, event_name):
    job_id = str(e.job.id)
    take_ended(cfg, job_id)  # a requeued job starts over
    res = run_msrsave(cfg, ["job", "begin", job_id], log)
    if res.ok:
        d = res.data
        log.debug("job %s: snapshot %s, jobs on this host: %s"
                  % (job_id, d.get("snapshot"), ",".join(d.get("active_jobs") or [])))
        e.accept()
    why = "cannot snapshot MSRs for job %s: %s" % (job_id, res.describe())
    log.error(why)
    job_log(e, why)
    policy = cfg["on_snapshot_failure"]
    if policy == "accept":
        log.warning("job %s runs without an MSR snapshot (on_snapshot_failure = accept)" % job_id)
        e.accept()
    if policy == "offline":
        take_offline(e, cfg, why, event_name, log)
    e.reject(why)


def restored_text(restore):
    return "MSRs restored (%s written, %s unchanged, %s verified)" % (
        restore.get("written"), restore.get("unchanged"), restore.get("verified"))


def on_job_end(e, cfg, log, event_name):
    job_id = str(e.job.id)
    if e.type == pbs.EXECJOB_END and take_ended(cfg, job_id):
        log.debug("job %s: already ended by its epilogue on this host" % job_id)
        e.accept()
    res = run_msrsave(cfg, ["job", "end", job_id], log)
    if res.ok:
        d = res.data
        if e.type == pbs.EXECJOB_EPILOGUE:
            note_ended(cfg, job_id, log)
        restore = d.get("restore") if isinstance(d.get("restore"), dict) else None
        notes = "; ".join(notes_of(d))
        if restore:
            changed = changed_of(d)
            text = "; ".join(c["text"] for c in changed)
            log.debug("job %s: last job on this host, %s%s%s"
                      % (job_id, restored_text(restore),
                         "; changed by the job(s): " + text if text else "",
                         "; " + notes if notes else ""))
            if changed:
                record_changed(e, changed, log)
        else:
            log.debug("job %s: %s" % (job_id, notes or "other jobs still on this host: "
                                      + ",".join(d.get("active_jobs") or [])))
        e.accept()
    why = "MSR restore failed after job %s: %s" % (job_id, res.describe())
    log.error(why)
    job_log(e, why)
    if cfg["on_restore_failure"] == "offline":
        take_offline(e, cfg, why, event_name, log)
    e.accept()  # the job itself is not at fault: keep its exit status


def job_status(cfg, log):
    """(the jobs msrsave holds this host for, the snapshot it keeps or None), or None when
    msrsave cannot say (logged)."""
    res = run_msrsave(cfg, ["job", "status"], log)
    if res.ok and isinstance(res.data.get("active_jobs"), list):
        return [str(j) for j in res.data["active_jobs"]], res.data.get("snapshot")
    log.error("cannot tell which jobs hold this host: %s" % res.describe())
    return None


def reconcile_jobs(e, cfg, log, event_name):
    """End the jobs msrsave holds this host for that the mom no longer runs (their end hook
    never ran: mom killed, job purged), so that the host's registers get restored:
    `msrsave job reconcile --running-jobs` with the mom's e.job_list. msrsave ends only jobs
    registered for longer than its own grace period (a job starting now is left alone) and
    restores the host if they were the last.

    Returns the jobs on this host (the mom's and msrsave's), or None when they cannot be known
    or a failed restore has just taken the host offline: no drift check then."""
    try:
        mom_jobs = sorted(str(j) for j in e.job_list.keys())
    except Exception as err:
        log.debug("no job list (%s): jobs the mom forgot not looked for" % err)
        status = job_status(cfg, log)
        return None if status is None else status[0]
    res = run_msrsave(cfg, ["job", "reconcile", "--running-jobs=" + ",".join(mom_jobs)], log)
    d = res.data if isinstance(res.data, dict) else {}
    if res.ok and isinstance(d.get("active_jobs"), list):
        reaped = [str(r) for r in d.get("reaped") or []]
        restore = d.get("restore") if isinstance(d.get("restore"), dict) else None
        if restore:
            changed = "; ".join(c["text"] for c in changed_of(d))
            outcome = restored_text(restore) + ("; changed by the job(s): " + changed
                                                if changed else "")
        else:
            outcome = "other jobs still on this host: %s" % ",".join(d["active_jobs"])
        for line in reaped:  # "job ID ended by reconciliation: registered N s ago, and ..."
            log.warning("the mom no longer runs this job: %s; %s" % (line, outcome))
        return sorted(set(mom_jobs) | set(str(j) for j in d["active_jobs"]))
    why = res.describe()
    log.error("cannot end the jobs the mom no longer runs: %s" % why)
    status = job_status(cfg, log)
    if status is None:
        return None
    jobs, snapshot = status
    if not jobs and snapshot:
        # No job holds the host and msrsave keeps a snapshot: a restore is due or has failed.
        why = "MSR restore failed after a job the mom no longer runs: %s" % why
        if cfg["on_restore_failure"] == "offline":
            take_offline(e, cfg, why, event_name, log, reconcile=True)
        else:
            log.error("%s (on_restore_failure = log)" % why)
        return None
    return sorted(set(mom_jobs) | set(jobs))


def take_baseline(cfg, baseline, log, why):
    parent = os.path.dirname(baseline)
    try:
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
    except OSError as err:
        log.error("cannot create %s for the baseline: %s" % (parent, err))
        return False
    res = run_msrsave(cfg, ["save", baseline], log)
    if res.ok:
        log.debug("baseline %s taken (%s): %s MSRs on %s CPUs"
                  % (baseline, why, res.data.get("msrs"), res.data.get("cpus")))
        return True
    log.error("cannot take the baseline %s: %s" % (baseline, res.describe()))
    return False


def on_periodic(e, cfg, log, event_name):
    prune_ended(cfg, log)
    conf, why = msr_restore_config(cfg, log)
    if conf is None:
        log.error("MSR drift check could not run: %s" % why)
        e.accept()
    jobs = reconcile_jobs(e, cfg, log, event_name)
    if jobs is None:
        log.error("MSR drift check could not run: the jobs on this host are not known")
        e.accept()
    if jobs:
        log.debug("drift check skipped: job(s) %s on this host" % ",".join(jobs))
        e.accept()
    baseline = str(conf.get("baseline"))
    if not os.path.exists(baseline):
        log.warning("no baseline %s (exechost_startup did not run or failed); taking it now "
                    "on an idle host" % baseline)
        take_baseline(cfg, baseline, log, "first idle periodic check")
        e.accept()
    args = ["check", baseline]
    if cfg["prometheus"]:
        args += ["--prometheus", cfg["prometheus"]]
    res = run_msrsave(cfg, args, log)
    d = res.data if isinstance(res.data, dict) else {}
    if res.error is None and d.get("clean") is True and res.code == 0:
        log.debug("MSR check clean against %s" % baseline)
        bring_back(e, cfg, log)
        e.accept()
    if res.error is None and d.get("clean") is False and not d.get("error"):
        why = str(d.get("summary") or "%s register(s) differ from %s"
                  % (d.get("drifted"), baseline))
        if not why.startswith("MSR "):
            why = ("MSR drift: " if d.get("drifted") else "MSR check: ") + why
        if conf.get("on_drift") != "log":
            log.error(why)
            take_offline(e, cfg, why, event_name, log, reconcile=True)
        else:
            log.warning(why + " (on_drift = log: the host stays in service)")
        e.accept()
    # The check itself could not run: say so, leave the vnode state alone.
    log.error("MSR drift check could not run: %s" % res.describe())
    e.accept()


def on_startup(e, cfg, log, event_name):
    if cfg["load_allowlist"]:
        res = run_msrsave(cfg, ["allowlist", "load", "--auto"], log)
        if res.ok:
            log.debug("allowlist loaded: %s" % (res.data.get("file") or "ok"))
        else:
            why = "cannot load the MSR allowlist: %s" % res.describe()
            log.error(why)
            take_offline(e, cfg, why, event_name, log)
            e.accept()
    if cfg["baseline_on_startup"]:
        conf, why = msr_restore_config(cfg, log)
        if conf is None:
            log.error("cannot take the baseline: %s" % why)
            e.accept()
        baseline = str(conf.get("baseline"))
        status = job_status(cfg, log)
        if status is None:
            log.error("baseline %s not taken (the first idle periodic check takes it)"
                      % baseline)
        elif status[0]:
            log.warning("job(s) %s still hold this host (mom restarted under running jobs): "
                        "baseline %s kept" % (",".join(status[0]), baseline))
        else:
            take_baseline(cfg, baseline, log, "mom start")
    e.accept()


def event_names():
    names = {}
    for attr in ("EXECJOB_BEGIN", "EXECJOB_PROLOGUE", "EXECJOB_EPILOGUE", "EXECJOB_END",
                 "EXECHOST_PERIODIC", "EXECHOST_STARTUP", "PERIODIC"):
        if hasattr(pbs, attr):
            names[getattr(pbs, attr)] = attr.lower()
    return names


def fallback(e, event_type, cfg, log, event_name):
    """After an unexpected exception: the safe outcome for the event. A job start is refused
    (requeued) unless the site said to run jobs without a snapshot; a job end takes the host
    offline unless the site said to only log."""
    if cfg is None:
        cfg = dict(DEFAULTS)
    why = "internal error in the msr-restore hook during %s (see the mom log)" % event_name
    if event_type in (pbs.EXECJOB_BEGIN, pbs.EXECJOB_PROLOGUE):
        if cfg.get("on_snapshot_failure") == "accept":
            e.accept()
        if cfg.get("on_snapshot_failure") == "offline":
            try:
                take_offline(e, cfg, why, event_name, log)
            except Exception as err:
                log.error("while recovering: cannot take the host offline: %r" % (err,))
        e.reject(why)
    if event_type in (pbs.EXECJOB_EPILOGUE, pbs.EXECJOB_END):
        if cfg.get("on_restore_failure") == "offline":
            try:
                take_offline(e, cfg, why, event_name, log)
            except Exception as err:
                log.error("while recovering: cannot take the host offline: %r" % (err,))
    e.accept()


def main():
    e = pbs.event()
    cfg = None
    event_type = None
    event_name = "unknown event"
    log = LOG
    try:
        event_type = e.type
        event_name = event_names().get(event_type, "event %r" % (event_type,))
        log.prefix = "%s[%s] %s" % (HOOK_NAME, e.hook_name, event_name)
        handlers = {
            pbs.EXECJOB_BEGIN: on_job_begin,
            pbs.EXECJOB_PROLOGUE: on_job_begin,
            pbs.EXECJOB_EPILOGUE: on_job_end,
            pbs.EXECJOB_END: on_job_end,
            pbs.EXECHOST_PERIODIC: on_periodic,
            pbs.EXECHOST_STARTUP: on_startup,
        }
        handler = handlers.get(event_type)
        if handler is None:
            # e.g. the server-side pbs.PERIODIC run that 'freq' also triggers
            log.debug("nothing to do for this event")
            e.accept()
        cfg = load_config(pbs.hook_config_filename, log)
        handler(e, cfg, log, event_name)
        e.accept()
    except Exception:
        for line in traceback.format_exc().splitlines():
            log.error(line)
        try:
            fallback(e, event_type, cfg, log, event_name)
        except Exception:
            log.error("while recovering: %s" % traceback.format_exc().splitlines()[-1])
            e.accept()


# ---------------------------------------------------------------------------------------------
# Command line (outside PBS): validate a config file.

def cli(argv):
    global CLI_MODE
    CLI_MODE = True
    usage = ("usage: msr_restore_hook.py --check-config FILE [--msrsave PATH] [--get KEY]\n"
             "  validate a hook config file and print the effective settings as JSON (or one\n"
             "  setting with --get): the hook's own keys here, the msr-restore keys by\n"
             "  `msrsave config show` with the same --config/--set the hook passes (msrsave:\n"
             "  the config's, or PATH); exit 1 if the file has errors or msrsave refuses it\n")
    if len(argv) < 2 or argv[0] != "--check-config":
        sys.stderr.write(usage)
        return 2
    path, rest = argv[1], argv[2:]
    msrsave = get = None
    while rest:
        if rest[0] in ("--msrsave", "--get") and len(rest) >= 2:
            if rest[0] == "--msrsave":
                msrsave = rest[1]
            else:
                get = rest[1]
            rest = rest[2:]
        else:
            sys.stderr.write(usage)
            return 2
    log = Log("%s config" % HOOK_NAME)
    cfg = load_config(path, log)
    if msrsave:
        cfg["msrsave"] = msrsave
    # The msr-restore keys are msrsave's to judge: ask it, with the hook's overrides.
    conf = None
    if not (os.path.isfile(cfg["msrsave"]) and os.access(cfg["msrsave"], os.X_OK)):
        log.error("msrsave %s is not there or not executable: it is needed to check the "
                  "msr-restore configuration (install msrsave here, or pass --msrsave PATH)"
                  % cfg["msrsave"])
    else:
        conf, why = msr_restore_config(cfg, log)
        if conf is None:
            log.error("msrsave does not accept the msr-restore configuration: %s" % why)
    if get is not None:
        if get in DEFAULTS:
            value = cfg[get]
        elif conf is not None and get in conf:
            value = conf[get]
        else:
            sys.stderr.write("unknown key %s\n" % get)
            return 2
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        sys.stdout.write("%s\n" % (json.dumps(value) if not isinstance(value, str) else value))
    else:
        shown = dict((k, cfg[k]) for k in DEFAULTS)
        shown["msr_restore_set"] = cfg["set"]
        shown["msr_restore"] = conf
        sys.stdout.write(json.dumps(shown, indent=1, sort_keys=True) + "\n")
    return 1 if any(level == "error" for level, _ in log.lines) else 0


if getattr(sys, "argv", None) and len(sys.argv) > 1 and sys.argv[1] == "--check-config":
    sys.exit(cli(sys.argv[1:]))
elif pbs is not None:
    main()
else:
    sys.stderr.write("msr_restore_hook.py runs inside PBS as a hook; outside PBS only "
                     "'--check-config FILE' is available\n")
    sys.exit(2)
