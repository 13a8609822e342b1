/* The step timer in C: the same objects as the pure-Python ones in timing.py, for the hot path.

   A session task's coroutine is wrapped so each step (one send/throw) is timed. In Python that costs
   a frame per step, two float clock reads and a StopIteration raised through the wrapper when the
   coroutine ends; here the task steps the wrapper through `am_send` (as it steps a native coroutine),
   the clock is read with clock_gettime and nothing is allocated per step. The objects and their
   attributes mirror timing.py exactly: monitor.py and snapshot.py read either without knowing which.

   Times are seconds, as double, on the clock behind time.perf_counter() (CLOCK_MONOTONIC on Linux,
   mach_absolute_time on macOS, read here as CLOCK_UPTIME_RAW in ns), converted the way CPython
   converts it, so they compare with perf_counter() readings. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <time.h>
#include <string.h>

static inline double
now_s(void)
{
#ifdef __APPLE__
    int64_t ns = (int64_t)clock_gettime_nsec_np(CLOCK_UPTIME_RAW);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
    return (double)ns / 1e9;
}

/* -- StepClock ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *current;      /* the innermost step running now (its wrapper), or None */
    double started;         /* when the current (or the last) step began */
    double total_s;         /* own time of every nested-aware step so far */
    Py_ssize_t long_steps;  /* steps longer than the threshold so far */
    double threshold_s;
    PyObject *on_long_step; /* called as (wrapper, start, own seconds) after a long step */
} StepClockObject;

static int
clock_traverse(StepClockObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->current);
    Py_VISIT(self->on_long_step);
    return 0;
}

static int
clock_clear(StepClockObject *self)
{
    Py_CLEAR(self->current);
    Py_CLEAR(self->on_long_step);
    return 0;
}

static void
clock_dealloc(StepClockObject *self)
{
    PyObject_GC_UnTrack(self);
    clock_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
clock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"threshold_s", "on_long_step", NULL};
    double threshold_s;
    PyObject *on_long_step;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "dO:StepClock", kwlist, &threshold_s, &on_long_step)) {
        return NULL;
    }
    StepClockObject *self = (StepClockObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->current = Py_NewRef(Py_None);
    self->threshold_s = threshold_s;
    self->on_long_step = Py_NewRef(on_long_step);
    return (PyObject *)self;
}

static PyMemberDef clock_members[] = {
    {"current", T_OBJECT, offsetof(StepClockObject, current), 0,
     "The innermost step running now (its wrapper), or None between steps."},
    {"started", T_DOUBLE, offsetof(StepClockObject, started), 0,
     "When the current step (or, between steps, the last one) began."},
    {"total_s", T_DOUBLE, offsetof(StepClockObject, total_s), 0,
     "Own time of every nested-aware step so far: lets a step subtract the steps nested in it."},
    {"long_steps", T_PYSSIZET, offsetof(StepClockObject, long_steps), 0,
     "Steps longer than the threshold so far."},
    {"threshold_s", T_DOUBLE, offsetof(StepClockObject, threshold_s), 0, NULL},
    {"on_long_step", T_OBJECT, offsetof(StepClockObject, on_long_step), 0,
     "Called on the loop thread as (wrapper, start, own seconds) after a step over the threshold."},
    {NULL}
};

static PyTypeObject StepClockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "openrtc.introspection._steps.StepClock",
    .tp_doc = "The step in progress on one event loop, and the total time of all steps.",
    .tp_basicsize = sizeof(StepClockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = clock_new,
    .tp_dealloc = (destructor)clock_dealloc,
    .tp_traverse = (traverseproc)clock_traverse,
    .tp_clear = (inquiry)clock_clear,
    .tp_members = clock_members,
};

/* -- SessionStats --------------------------------------------------------------------------- */

static PyObject *str_tasks;  /* "tasks" */

#define RING_MAX 11  /* slots of a CPU ring: windows.RING (a test holds the two equal) */

typedef struct {
    PyObject_HEAD
    PyObject *session;
    PyObject *tasks;  /* the session's `tasks` dict, read once: the per-task paths skip an attribute lookup */
    double busy_s;
    Py_ssize_t blocks;
    PyObject *last_block;
    double last_block_mono;
    /* `busy_s` at each of the last ticks, written by the windows' tick: inline doubles, not a list of
       floats (11 objects a session, made anew at every tick, and about 400 bytes a session). */
    Py_ssize_t ring_len;  /* 0: no tick yet (`cpu_ring` reads None) */
    double ring[RING_MAX];
} SessionStatsObject;

static int
stats_traverse(SessionStatsObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->session);
    Py_VISIT(self->tasks);
    Py_VISIT(self->last_block);
    return 0;
}

static int
stats_clear(SessionStatsObject *self)
{
    Py_CLEAR(self->session);
    Py_CLEAR(self->tasks);
    Py_CLEAR(self->last_block);
    return 0;
}

static void
stats_dealloc(SessionStatsObject *self)
{
    PyObject_GC_UnTrack(self);
    stats_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
stats_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"session", NULL};
    PyObject *session;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:SessionStats", kwlist, &session)) {
        return NULL;
    }
    SessionStatsObject *self = (SessionStatsObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->session = Py_NewRef(session);
    self->tasks = PyObject_GetAttr(session, str_tasks);
    if (self->tasks == NULL || !PyDict_Check(self->tasks)) {
        if (self->tasks != NULL || PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            Py_XSETREF(self->tasks, PyDict_New());  /* a session without one: filed nowhere anyone reads */
        }
        if (self->tasks == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    self->last_block = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static PyMemberDef stats_members[] = {
    {"session", T_OBJECT, offsetof(SessionStatsObject, session), READONLY, NULL},
    {"busy_s", T_DOUBLE, offsetof(SessionStatsObject, busy_s), 0,
     "Seconds its steps held the loop thread since it started."},
    {"blocks", T_PYSSIZET, offsetof(SessionStatsObject, blocks), 0, NULL},
    {"last_block", T_OBJECT, offsetof(SessionStatsObject, last_block), 0,
     "The latest `LastBlock` of this session."},
    {"last_block_mono", T_DOUBLE, offsetof(SessionStatsObject, last_block_mono), 0, NULL},
    {NULL}
};

static PyObject *
stats_get_ring(SessionStatsObject *self, void *Py_UNUSED(closure))
{
    if (self->ring_len == 0) {
        Py_RETURN_NONE;
    }
    PyObject *ring = PyList_New(self->ring_len);
    for (Py_ssize_t i = 0; ring != NULL && i < self->ring_len; i++) {
        PyObject *value = PyFloat_FromDouble(self->ring[i]);
        if (value == NULL) {
            Py_CLEAR(ring);
            break;
        }
        PyList_SET_ITEM(ring, i, value);
    }
    return ring;
}

static int
stats_set_ring(SessionStatsObject *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || value == Py_None) {
        self->ring_len = 0;
        return 0;
    }
    PyObject *items = PySequence_Fast(value, "cpu_ring must be a sequence of floats or None");
    if (items == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    if (n == 0 || n > RING_MAX) {
        Py_DECREF(items);
        PyErr_Format(PyExc_ValueError, "cpu_ring holds 1 to %d values", RING_MAX);
        return -1;
    }
    double ring[RING_MAX];
    for (Py_ssize_t i = 0; i < n; i++) {
        ring[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(items, i));
        if (ring[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(items);
            return -1;
        }
    }
    Py_DECREF(items);
    memcpy(self->ring, ring, sizeof(double) * (size_t)n);
    self->ring_len = n;
    return 0;
}

static PyObject *
stats_busy_since(SessionStatsObject *self, PyObject *arg)
{
    Py_ssize_t tick = PyLong_AsSsize_t(arg);
    if (tick == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (self->ring_len == 0) {
        return PyFloat_FromDouble(self->busy_s);
    }
    if (tick < 0 || tick >= self->ring_len) {
        PyErr_SetString(PyExc_IndexError, "busy_since: no such slot in the ring");
        return NULL;
    }
    return PyFloat_FromDouble(self->busy_s - self->ring[tick]);
}

static PyMethodDef stats_methods[] = {
    {"busy_since", (PyCFunction)stats_busy_since, METH_O,
     "Seconds its steps held the loop since ring slot `tick` was written (all of them before the first tick)."},
    {NULL}
};

static PyGetSetDef stats_getset[] = {
    {"cpu_ring", (getter)stats_get_ring, (setter)stats_set_ring,
     "`busy_s` at each of the last ticks (written by the windows' tick), as a list; None before the first.",
     NULL},
    {NULL}
};

static PyTypeObject SessionStatsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "openrtc.introspection._steps.SessionStats",
    .tp_doc = "Counters of one session, written on the loop thread, read by the introspection threads.",
    .tp_basicsize = sizeof(SessionStatsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = stats_new,
    .tp_dealloc = (destructor)stats_dealloc,
    .tp_traverse = (traverseproc)stats_traverse,
    .tp_clear = (inquiry)stats_clear,
    .tp_members = stats_members,
    .tp_methods = stats_methods,
    .tp_getset = stats_getset,
};

/* -- TimedCoroutine ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *wrapped;
    SessionStatsObject *stats;
    StepClockObject *clock;
} TimedObject;

static PyObject *str_throw;  /* "throw" */
static PyObject *str_close;  /* "close" */

static int
timed_traverse(TimedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->wrapped);
    Py_VISIT(self->stats);
    Py_VISIT(self->clock);
    return 0;
}

static int
timed_clear(TimedObject *self)
{
    Py_CLEAR(self->wrapped);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->clock);
    return 0;
}

static void
timed_dealloc(TimedObject *self)
{
    PyObject_GC_UnTrack(self);
    timed_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
timed_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wrapped", "stats", "clock", NULL};
    PyObject *wrapped;
    PyObject *stats;
    PyObject *clock;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!:TimedCoroutine", kwlist, &wrapped,
                                     &SessionStatsType, &stats, &StepClockType, &clock)) {
        return NULL;
    }
    TimedObject *self = (TimedObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->wrapped = Py_NewRef(wrapped);
    self->stats = (SessionStatsObject *)Py_NewRef(stats);
    self->clock = (StepClockObject *)Py_NewRef(clock);
    return (PyObject *)self;
}

/* Takes the wrapped coroutine out of its session's `tasks`, keeping any exception in flight. */
static void
forget_task(TimedObject *self)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyDict_DelItem(self->stats->tasks, self->wrapped) < 0 && PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();  /* already gone */
    }
    if (PyErr_Occurred()) {
        /* Bookkeeping must not change what the session's task sees: the coroutine's own outcome wins. */
        PyErr_WriteUnraisable((PyObject *)self);
    }
    PyErr_Restore(type, value, tb);
}

/* After a step: publish its end, charge it, and report it when long. Returns -1 with an exception set
   when the long-step callback failed (the exception of the step, if any, is chained to it). */
static int
step_done(TimedObject *self, double start, int ended)
{
    double own = now_s() - start;
    StepClockObject *clock = self->clock;
    PyObject *previous = clock->current;
    clock->current = Py_NewRef(Py_None);
    Py_XDECREF(previous);
    self->stats->busy_s += own;
    if (ended) {
        forget_task(self);
    }
    if (own > clock->threshold_s) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *res = PyObject_CallFunction(clock->on_long_step, "Odd", (PyObject *)self, start, own);
        if (res == NULL) {
            if (type != NULL) {
                PyErr_NormalizeException(&type, &value, &tb);
                if (tb != NULL) {
                    PyException_SetTraceback(value, tb);
                }
                PyObject *t2, *v2, *tb2;
                PyErr_Fetch(&t2, &v2, &tb2);
                PyErr_NormalizeException(&t2, &v2, &tb2);
                PyException_SetContext(v2, value); /* steals value */
                Py_DECREF(type);
                Py_XDECREF(tb);
                PyErr_Restore(t2, v2, tb2);
            }
            return -1;
        }
        Py_DECREF(res);
        PyErr_Restore(type, value, tb);
    }
    return 0;
}

static inline double
step_start(TimedObject *self)
{
    StepClockObject *clock = self->clock;
    double start = now_s();
    clock->started = start;  /* before `current`: another thread never sees this step with the last start */
    PyObject *previous = clock->current;
    clock->current = Py_NewRef((PyObject *)self);
    Py_XDECREF(previous);
    return start;
}

static PySendResult
timed_am_send(TimedObject *self, PyObject *arg, PyObject **presult)
{
    double start = step_start(self);
    PySendResult res = PyIter_Send(self->wrapped, arg, presult);
    if (step_done(self, start, res != PYGEN_NEXT) < 0) {
        Py_CLEAR(*presult);
        return PYGEN_ERROR;
    }
    return res;
}

static PyObject *
raise_stop(PyObject *value)
{
    /* StopIteration(value), wrapped so a tuple or an exception is not taken for its arguments. */
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
    }
    else {
        PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
        if (exc != NULL) {
            PyErr_SetObject(PyExc_StopIteration, exc);
            Py_DECREF(exc);
        }
    }
    Py_DECREF(value);
    return NULL;
}

static PyObject *
timed_send(TimedObject *self, PyObject *arg)
{
    PyObject *result = NULL;
    PySendResult res = timed_am_send(self, arg, &result);
    if (res == PYGEN_NEXT) {
        return result;
    }
    if (res == PYGEN_RETURN) {
        return raise_stop(result);
    }
    return NULL;
}

static PyObject *
timed_iternext(TimedObject *self)
{
    return timed_send(self, Py_None);
}

static PyObject *
timed_throw(TimedObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    double start = step_start(self);
    PyObject *result = PyObject_VectorcallMethod(
        str_throw, (PyObject *[]){self->wrapped, args[0], nargs > 1 ? args[1] : NULL, nargs > 2 ? args[2] : NULL},
        (size_t)nargs + 1, NULL);
    if (step_done(self, start, result == NULL) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
timed_close(TimedObject *self, PyObject *Py_UNUSED(ignored))
{
    forget_task(self);
    return PyObject_CallMethodNoArgs(self->wrapped, str_close);
}

static PyObject *
timed_await(TimedObject *self)
{
    return Py_NewRef((PyObject *)self);
}

static PyMethodDef timed_methods[] = {
    {"send", (PyCFunction)timed_send, METH_O, "Step the coroutine with a value, timing the step."},
    {"throw", (PyCFunction)(void (*)(void))timed_throw, METH_FASTCALL,
     "Throw an exception into the coroutine, timing the step."},
    {"close", (PyCFunction)timed_close, METH_NOARGS, "Close the coroutine."},
    {NULL}
};

static PyMemberDef timed_members[] = {
    {"wrapped", T_OBJECT, offsetof(TimedObject, wrapped), READONLY, "The original coroutine."},
    {"stats", T_OBJECT, offsetof(TimedObject, stats), READONLY, NULL},
    {"clock", T_OBJECT, offsetof(TimedObject, clock), READONLY, NULL},
    {NULL}
};

/* The coroutine facade: what debuggers, reprs and asyncio's task introspection read from a coroutine,
   passed on from the wrapped one (timing.py's `_CoroutineFacade` is the same for the Python wrapper).
   In C so the wrapper is this static type itself: a Python subclass made every wrapper's allocation
   and release go through the heap-type paths, a measurable part of the per-task cost. */

/* `obj.<name>` into *value, or NULL when it has none (PyObject_GetOptionalAttrString is 3.13+). */
static int
optional_attr(PyObject *obj, const char *name, PyObject **value)
{
    *value = PyObject_GetAttrString(obj, name);
    if (*value == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
    }
    return 0;
}

/* `wrapped.<name>`, else `wrapped.<alt>` (a generator's name for it), else `fallback`. */
static PyObject *
passed_on(TimedObject *self, const char *name, const char *alt, PyObject *fallback)
{
    PyObject *value = NULL;
    if (optional_attr(self->wrapped, name, &value) < 0) {
        return NULL;
    }
    if ((value == NULL || value == Py_None) && alt != NULL) {
        Py_XDECREF(value);
        if (optional_attr(self->wrapped, alt, &value) < 0) {
            return NULL;
        }
    }
    return value != NULL ? value : Py_NewRef(fallback);
}

static PyObject *
timed_get_cr_frame(TimedObject *self, void *Py_UNUSED(closure))
{
    return passed_on(self, "cr_frame", "gi_frame", Py_None);
}

static PyObject *
timed_get_cr_code(TimedObject *self, void *Py_UNUSED(closure))
{
    return passed_on(self, "cr_code", "gi_code", Py_None);
}

static PyObject *
timed_get_cr_await(TimedObject *self, void *Py_UNUSED(closure))
{
    return passed_on(self, "cr_await", NULL, Py_None);
}

static PyObject *
timed_get_cr_running(TimedObject *self, void *Py_UNUSED(closure))
{
    PyObject *value = passed_on(self, "cr_running", NULL, Py_False);
    if (value == NULL) {
        return NULL;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth < 0 ? NULL : PyBool_FromLong(truth);
}

static PyObject *
timed_get_name(TimedObject *self, void *Py_UNUSED(closure))
{
    /* What asyncio's task repr names the coroutine by. */
    PyObject *value = passed_on(self, "__name__", NULL, Py_None);
    if (value == Py_None) {
        Py_DECREF(value);
        return PyType_GetName(Py_TYPE(self->wrapped));
    }
    if (value != NULL && !PyUnicode_Check(value)) {
        Py_SETREF(value, PyObject_Str(value));
    }
    return value;
}

static PyGetSetDef timed_getset[] = {
    {"cr_frame", (getter)timed_get_cr_frame, NULL, NULL, NULL},
    {"cr_code", (getter)timed_get_cr_code, NULL, NULL, NULL},
    {"cr_await", (getter)timed_get_cr_await, NULL, NULL, NULL},
    {"cr_running", (getter)timed_get_cr_running, NULL, NULL, NULL},
    {"__name__", (getter)timed_get_name, NULL, NULL, NULL},
    {NULL}
};

static PyAsyncMethods timed_as_async = {
    .am_await = (unaryfunc)timed_await,
    .am_send = (sendfunc)timed_am_send,
};

static PyTypeObject TimedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "openrtc.introspection._steps.TimedCoroutine",
    .tp_doc = "Wraps a session task's coroutine and times each of its steps (C).",
    .tp_basicsize = sizeof(TimedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = timed_new,
    .tp_dealloc = (destructor)timed_dealloc,
    .tp_traverse = (traverseproc)timed_traverse,
    .tp_clear = (inquiry)timed_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)timed_iternext,
    .tp_as_async = &timed_as_async,
    .tp_methods = timed_methods,
    .tp_members = timed_members,
    .tp_getset = timed_getset,
};

/* -- TaskFactory ---------------------------------------------------------------------------- */

/* The tagging task factory's common call in C: `factory(loop, coro)` or `factory(loop, coro,
   context=ctx)` with no factory underneath. A factory written in Python costs a Python call with
   keyword arguments per task, several times what tagging itself costs; this one reads the session,
   wraps the coroutine, builds the task and files it without a Python frame. Any other call (more
   keyword arguments, a context that is not a `Context`) goes to `fallback`, the Python factory, which
   does the same things the general way. */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *task_type;      /* asyncio.Task */
    PyObject *var;            /* the session's ContextVar (its default is None) */
    PyTypeObject *wrapper;    /* TimedCoroutine or a subclass */
    StepClockObject *clock;
    PyObject *fallback;
} FactoryObject;

static PyObject *str_stats;          /* "stats" */
static PyObject *str_context;        /* "context" */
static PyObject *kw_loop_context;    /* ("loop", "context") */

static int
factory_traverse(FactoryObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->task_type);
    Py_VISIT(self->var);
    Py_VISIT(self->wrapper);
    Py_VISIT(self->clock);
    Py_VISIT(self->fallback);
    return 0;
}

static int
factory_clear(FactoryObject *self)
{
    Py_CLEAR(self->task_type);
    Py_CLEAR(self->var);
    Py_CLEAR(self->wrapper);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
factory_dealloc(FactoryObject *self)
{
    PyObject_GC_UnTrack(self);
    factory_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
factory_vectorcall(FactoryObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *context = NULL;
    if (nargs != 2 || nkw > 1) {
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    }
    if (nkw == 1) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, 0);
        if (name != str_context && PyUnicode_Compare(name, str_context) != 0) {
            return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
        }
        context = args[2];
        if (context == Py_None) {
            context = NULL;
        }
        else if (!PyContext_CheckExact(context)) {
            return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
        }
    }
    PyObject *loop = args[0];
    PyObject *coro = args[1];

    PyObject *session;
    if (context == NULL) {
        if (PyContextVar_Get(self->var, NULL, &session) < 0) {
            return NULL;
        }
    }
    else {
        session = PyObject_GetItem(context, self->var);
        if (session == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
                return NULL;
            }
            PyErr_Clear();  /* not set in that context: the default, None */
        }
    }
    PyObject *stats = NULL;
    if (session != NULL && session != Py_None) {
        stats = PyObject_GetAttr(session, str_stats);
        if (stats == NULL) {
            Py_DECREF(session);
            return NULL;
        }
        if (stats == Py_None) {
            Py_CLEAR(stats);
        }
        else if (!PyObject_TypeCheck(stats, &SessionStatsType)) {
            /* The Python step timer's stats: the Python factory wraps for it. */
            Py_DECREF(stats);
            Py_DECREF(session);
            return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
        }
    }

    PyObject *target = coro;
    if (stats != NULL) {
        TimedObject *wrapped = (TimedObject *)self->wrapper->tp_alloc(self->wrapper, 0);
        if (wrapped == NULL) {
            Py_DECREF(stats);
            Py_DECREF(session);
            return NULL;
        }
        wrapped->wrapped = Py_NewRef(coro);
        wrapped->stats = (SessionStatsObject *)stats;  /* the reference moves to the wrapper */
        wrapped->clock = (StepClockObject *)Py_NewRef((PyObject *)self->clock);
        target = (PyObject *)wrapped;
    }
    PyObject *task = PyObject_Vectorcall(
        self->task_type, (PyObject *[]){target, loop, context == NULL ? Py_None : context}, 1,
        kw_loop_context);
    if (stats != NULL) {
        Py_DECREF(target);
    }
    if (task != NULL && stats != NULL) {
        /* Not started yet: it cannot have ended, so the wrapper will find its entry. */
        if (PyDict_SetItem(((SessionStatsObject *)stats)->tasks /* alive: the task holds its wrapper */, coro, task) < 0) {
            Py_CLEAR(task);
        }
    }
    Py_XDECREF(session);
    return task;
}

static PyObject *
factory_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"task_type", "var", "wrapper", "clock", "fallback", NULL};
    PyObject *task_type, *var, *wrapper, *clock, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!O!O:TaskFactory", kwlist, &task_type,
                                     &PyContextVar_Type, &var, &PyType_Type, &wrapper,
                                     &StepClockType, &clock, &fallback)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)wrapper, &TimedType)) {
        PyErr_SetString(PyExc_TypeError, "wrapper must be TimedCoroutine or a subclass");
        return NULL;
    }
    FactoryObject *self = (FactoryObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)factory_vectorcall;
    self->task_type = Py_NewRef(task_type);
    self->var = Py_NewRef(var);
    self->wrapper = (PyTypeObject *)Py_NewRef(wrapper);
    self->clock = (StepClockObject *)Py_NewRef(clock);
    self->fallback = Py_NewRef(fallback);
    return (PyObject *)self;
}

static PyMemberDef factory_members[] = {
    {"fallback", T_OBJECT, offsetof(FactoryObject, fallback), READONLY,
     "The Python factory, for the calls this one does not take."},
    {NULL}
};

static PyTypeObject FactoryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "openrtc.introspection._steps.TaskFactory",
    .tp_doc = "The tagging task factory's common call, in C (see tagging.py).",
    .tp_basicsize = sizeof(FactoryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = factory_new,
    .tp_dealloc = (destructor)factory_dealloc,
    .tp_traverse = (traverseproc)factory_traverse,
    .tp_clear = (inquiry)factory_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(FactoryObject, vectorcall),
    .tp_members = factory_members,
};

/* -- scan ------------------------------------------------------------------------------------ */

/* The keying pass of a snapshot's selection, for its common request (sorted by CPU, no filter), in C:
   snapshot.py's `_select` is the reference and does the same in Python for every other request, and
   for this one without the extension. At 10,000 sessions the Python pass was most of what a refresh of
   the live `top` cost the worker (about 0.5 us a session); here each session is a handful of
   attribute reads. */

static PyObject *str_agent, *str_tenant, *str_state, *str_capacity, *str_process, *str_id;
static PyObject *str_token_class, *str_kv_bytes, *str_cpu_pct;

/* Adds `value` to `set` unless it is `*last` (runs of one value are the common case). */
static inline int
add_new(PyObject *set, PyObject *value, PyObject **last)
{
    if (value == *last) {
        return 0;
    }
    Py_XSETREF(*last, Py_NewRef(value));
    return PySet_Add(set, value);
}

typedef struct {
    Py_ssize_t oldest;
    double to_pct, held, slow_since, flag;
    PyObject *running_id, *stalled_id, *span, *now, *finished;
    PyObject *keys, *agents, *tenants, *states, *classes, *live_classes, *kv;
    PyObject *last[3];  /* the agent, tenant and state added last */
} Scan;

/* Appends one session's key to `keys` and adds its values to the facets and capacity sums; -1 with an
   exception set on failure. */
static int
scan_one(Scan *c, PyObject *session, int active)
{
    PyObject *running_id = c->running_id, *stalled_id = c->stalled_id;
    PyObject *keys = c->keys, *agents = c->agents, *tenants = c->tenants, *states = c->states;
    PyObject *classes = c->classes, *live_classes = c->live_classes, *kv = c->kv;
    PyObject **last = c->last;
    int rc = -1;
    PyObject *agent = NULL, *tenant = NULL, *state = NULL, *capacity = NULL, *stats = NULL;
    PyObject *process = NULL, *sid = NULL, *key = NULL;
    if ((agent = PyObject_GetAttr(session, str_agent)) == NULL ||
        (tenant = PyObject_GetAttr(session, str_tenant)) == NULL ||
        (state = PyObject_GetAttr(session, str_state)) == NULL ||
        (capacity = PyObject_GetAttr(session, str_capacity)) == NULL ||
        (stats = PyObject_GetAttr(session, str_stats)) == NULL ||
        (process = PyObject_GetAttr(session, str_process)) == NULL) {
        goto done;
    }
    if (add_new(agents, agent, &last[0]) < 0 ||
        (tenant != Py_None && add_new(tenants, tenant, &last[1]) < 0) ||
        add_new(states, state, &last[2]) < 0) {
        goto done;
    }
    if (capacity != Py_None) {
        PyObject *token_class = PyObject_GetAttr(capacity, str_token_class);
        if (token_class == NULL) {
            goto done;
        }
        int bad = PySet_Add(classes, token_class) < 0;
        if (!bad && active && token_class != Py_None) {
            PyObject *count = PyDict_GetItemWithError(live_classes, token_class);
            long n = count == NULL ? 0 : PyLong_AsLong(count);
            PyObject *next = PyErr_Occurred() ? NULL : PyLong_FromLong(n + 1);
            bad = next == NULL || PyDict_SetItem(live_classes, token_class, next) < 0;
            Py_XDECREF(next);
        }
        Py_DECREF(token_class);
        if (bad) {
            goto done;
        }
        if (active) {
            PyObject *bytes = PyObject_GetAttr(capacity, str_kv_bytes);
            if (bytes == NULL || (bytes != Py_None && PyList_Append(kv, bytes) < 0)) {
                Py_XDECREF(bytes);
                goto done;
            }
            Py_DECREF(bytes);
        }
    }
    int watched = stats != Py_None && process == Py_None;
    SessionStatsObject *st = NULL;
    if (stats != Py_None) {
        if (!PyObject_TypeCheck(stats, &SessionStatsType)) {
            PyErr_SetString(PyExc_TypeError, "scan reads the C step timer's stats only");
            goto done;
        }
        st = (SessionStatsObject *)stats;
    }
    int slow = watched && st->blocks > 0 && st->last_block_mono >= c->slow_since;
    if (!slow && stalled_id != Py_None) {
        if ((sid = PyObject_GetAttr(session, str_id)) == NULL) {
            goto done;
        }
        int same = PyObject_RichCompareBool(sid, stalled_id, Py_EQ);
        if (same < 0) {
            goto done;
        }
        slow = same;
    }
    int finished = state == PyTuple_GET_ITEM(c->finished, 0) || state == PyTuple_GET_ITEM(c->finished, 1) ||
                   state == PyTuple_GET_ITEM(c->finished, 2);
    double value = 0.0;
    if (active && watched) {
        double busy = st->busy_s;
        if (st->ring_len > 0) {
            if (c->oldest < 0 || c->oldest >= st->ring_len) {
                PyErr_SetString(PyExc_ValueError, "scan: the window's oldest tick is outside a session's ring");
                goto done;
            }
            busy -= st->ring[c->oldest];
        }
        if (running_id != Py_None) {
            if (sid == NULL && (sid = PyObject_GetAttr(session, str_id)) == NULL) {
                goto done;
            }
            int same = PyObject_RichCompareBool(sid, running_id, Py_EQ);
            if (same < 0) {
                goto done;
            }
            if (same) {
                busy += c->held;
            }
        }
        value = busy * c->to_pct;
    }
    else if (active && process != Py_None) {
        /* Its own process: the OS's figure, as its row shows it. */
        PyObject *pct = PyObject_CallMethodObjArgs(process, str_cpu_pct, c->span, c->now, NULL);
        if (pct == NULL) {
            goto done;
        }
        value = PyFloat_AsDouble(pct);
        Py_DECREF(pct);
        if (value == -1.0 && PyErr_Occurred()) {
            goto done;
        }
    }
    /* Else 0: a finished session, or one without stats, shows no CPU. */
    key = PyFloat_FromDouble(((slow ? 0 : 2) + (finished ? 1 : 0)) * c->flag - value);
    if (key == NULL || PyList_Append(keys, key) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(agent);
    Py_XDECREF(tenant);
    Py_XDECREF(state);
    Py_XDECREF(capacity);
    Py_XDECREF(stats);
    Py_XDECREF(process);
    Py_XDECREF(sid);
    Py_XDECREF(key);
    return rc;
}

static PyObject *
steps_scan(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    /* scan(sessions, start, stop, params, out): see `_select` in snapshot.py. */
    if (nargs != 5 || !PyList_Check(args[0]) || !PyTuple_Check(args[3]) || PyTuple_GET_SIZE(args[3]) != 11 ||
        !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != 7) {
        PyErr_SetString(PyExc_TypeError, "scan(sessions, start, stop, params, out)");
        return NULL;
    }
    PyObject *sessions = args[0];
    PyObject *const *p = &PyTuple_GET_ITEM(args[3], 0);
    PyObject *const *out = &PyTuple_GET_ITEM(args[4], 0);
    /* params: live, oldest, to_pct, running_id, held, stalled_id, slow_since, span, now, flag, finished;
       out: keys, agents, tenants, states, classes, live_classes, kv */
    if (!PyList_Check(out[0]) || !PySet_Check(out[1]) || !PySet_Check(out[2]) || !PySet_Check(out[3]) ||
        !PySet_Check(out[4]) || !PyDict_Check(out[5]) || !PyList_Check(out[6]) || !PyFloat_Check(p[2]) ||
        !PyFloat_Check(p[4]) || !PyFloat_Check(p[6]) || !PyFloat_Check(p[9]) || !PyTuple_Check(p[10]) ||
        PyTuple_GET_SIZE(p[10]) != 3) {
        PyErr_SetString(PyExc_TypeError, "scan: a parameter or an output of the wrong type");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), stop = PyLong_AsSsize_t(args[2]);
    Py_ssize_t live = PyLong_AsSsize_t(p[0]);
    Scan c = {
        .oldest = PyLong_AsSsize_t(p[1]),
        .to_pct = PyFloat_AS_DOUBLE(p[2]),
        .running_id = p[3],
        .held = PyFloat_AS_DOUBLE(p[4]),
        .stalled_id = p[5],
        .slow_since = PyFloat_AS_DOUBLE(p[6]),
        .span = p[7],
        .now = p[8],
        .flag = PyFloat_AS_DOUBLE(p[9]),
        .finished = p[10],
        .keys = out[0], .agents = out[1], .tenants = out[2], .states = out[3], .classes = out[4],
        .live_classes = out[5], .kv = out[6],
    };
    if (PyErr_Occurred()) {
        return NULL;
    }
    int rc = 0;
    for (Py_ssize_t i = start; rc == 0 && i < stop && i < PyList_GET_SIZE(sessions); i++) {
        PyObject *session = Py_NewRef(PyList_GET_ITEM(sessions, i));
        rc = scan_one(&c, session, i < live);
        Py_DECREF(session);
    }
    Py_XDECREF(c.last[0]);
    Py_XDECREF(c.last[1]);
    Py_XDECREF(c.last[2]);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

/* smallest(keys, limit): the indexes of the `limit` smallest of `keys` (floats), smallest first, ties
   by index: what `heapq.nsmallest(limit, range(len(keys)), key=keys.__getitem__)` gives, without a
   Python call per key (at 10,000 keys, as long as the keying pass itself). */

typedef struct {
    double key;
    Py_ssize_t index;
} Ranked;

/* a comes after b: the larger key, or the same key and the later index */
static inline int
after(const Ranked *a, const Ranked *b)
{
    return a->key > b->key || (a->key == b->key && a->index > b->index);
}

static void
sift_down(Ranked *heap, Py_ssize_t n, Py_ssize_t at)
{
    for (;;) {
        Py_ssize_t child = 2 * at + 1, top = at;
        if (child < n && after(&heap[child], &heap[top])) {
            top = child;
        }
        if (child + 1 < n && after(&heap[child + 1], &heap[top])) {
            top = child + 1;
        }
        if (top == at) {
            return;
        }
        Ranked tmp = heap[at];
        heap[at] = heap[top];
        heap[top] = tmp;
        at = top;
    }
}

static int
compare_ranked(const void *a, const void *b)
{
    return after((const Ranked *)a, (const Ranked *)b) ? 1 : after((const Ranked *)b, (const Ranked *)a) ? -1 : 0;
}

static PyObject *
steps_smallest(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "smallest(keys: list[float], limit: int)");
        return NULL;
    }
    PyObject *keys = args[0];
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (limit > n) {
        limit = n;
    }
    if (limit <= 0) {
        return PyList_New(0);
    }
    Ranked *heap = PyMem_New(Ranked, (size_t)limit);  /* a max-heap of the smallest so far */
    if (heap == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(keys, i);
        if (!PyFloat_CheckExact(item)) {
            PyMem_Free(heap);
            PyErr_SetString(PyExc_TypeError, "smallest: every key must be a float");
            return NULL;
        }
        Ranked r = {PyFloat_AS_DOUBLE(item), i};
        if (size < limit) {
            /* sift up */
            Py_ssize_t at = size++;
            heap[at] = r;
            while (at > 0 && after(&heap[at], &heap[(at - 1) / 2])) {
                Ranked tmp = heap[at];
                heap[at] = heap[(at - 1) / 2];
                heap[(at - 1) / 2] = tmp;
                at = (at - 1) / 2;
            }
        }
        else if (after(&heap[0], &r)) {
            heap[0] = r;
            sift_down(heap, size, 0);
        }
    }
    qsort(heap, (size_t)size, sizeof(Ranked), compare_ranked);
    PyObject *out = PyList_New(size);
    for (Py_ssize_t i = 0; out != NULL && i < size; i++) {
        PyObject *index = PyLong_FromSsize_t(heap[i].index);
        if (index == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, index);
    }
    PyMem_Free(heap);
    return out;
}

/* tick(sessions, i, size): each session's busy time into slot `i` of its CPU ring (`size` slots,
   zeros at its first tick): the windows' tick (windows.py), which runs twice a second over every
   session. Sessions without stats are skipped; stats of the pure-Python timer go through their
   attributes (their ring is a list). */
static PyObject *
steps_tick(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "tick(sessions: list, i: int, size: int)");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]), size = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (size <= 0 || size > RING_MAX || at < 0 || at >= size) {
        PyErr_Format(PyExc_ValueError, "tick: a ring has 1 to %d slots, and the slot is within it", RING_MAX);
        return NULL;
    }
    PyObject *sessions = args[0];
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(sessions); k++) {
        PyObject *stats = PyObject_GetAttr(PyList_GET_ITEM(sessions, k), str_stats);
        if (stats == NULL) {
            return NULL;
        }
        int failed = 0;
        if (PyObject_TypeCheck(stats, &SessionStatsType)) {
            SessionStatsObject *st = (SessionStatsObject *)stats;
            if (st->ring_len != size) {
                if (st->ring_len != 0) {
                    PyErr_SetString(PyExc_ValueError, "tick: a session's cpu_ring is not a ring of this size");
                    failed = 1;
                }
                else {
                    memset(st->ring, 0, sizeof(st->ring));
                    st->ring_len = size;
                }
            }
            if (!failed) {
                st->ring[at] = st->busy_s;
            }
        }
        else if (stats != Py_None) {
            /* The pure-Python timer's stats: the same, through attributes. */
            PyObject *ring = PyObject_GetAttrString(stats, "cpu_ring");
            PyObject *busy = ring == NULL ? NULL : PyObject_GetAttrString(stats, "busy_s");
            failed = busy == NULL;
            if (!failed && ring == Py_None) {
                Py_SETREF(ring, PyList_New(size));
                PyObject *zero = ring == NULL ? NULL : PyFloat_FromDouble(0.0);
                failed = zero == NULL;
                for (Py_ssize_t j = 0; !failed && j < size; j++) {
                    PyList_SET_ITEM(ring, j, Py_NewRef(zero));
                }
                Py_XDECREF(zero);
                failed = failed || PyObject_SetAttrString(stats, "cpu_ring", ring) < 0;
            }
            if (!failed) {
                if (!PyList_Check(ring) || PyList_GET_SIZE(ring) != size) {
                    PyErr_SetString(PyExc_ValueError, "tick: a session's cpu_ring is not a ring of this size");
                    failed = 1;
                }
                else {
                    PyList_SetItem(ring, at, Py_NewRef(busy));  /* steals the new reference */
                }
            }
            Py_XDECREF(ring);
            Py_XDECREF(busy);
        }
        Py_DECREF(stats);
        if (failed) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef steps_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))steps_scan, METH_FASTCALL,
     "The keying pass of a snapshot selection sorted by CPU without filters (see snapshot.py)."},
    {"smallest", (PyCFunction)(void (*)(void))steps_smallest, METH_FASTCALL,
     "The indexes of the `limit` smallest float keys, smallest first, ties by index."},
    {"tick", (PyCFunction)(void (*)(void))steps_tick, METH_FASTCALL,
     "Each session's busy time into slot `i` of its CPU ring (see windows.py)."},
    {NULL}
};

/* -- module --------------------------------------------------------------------------------- */

static struct PyModuleDef steps_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "openrtc.introspection._steps",
    .m_doc = "The step timer in C (see timing.py for the pure-Python reference).",
    .m_size = -1,
    .m_methods = steps_methods,
};

PyMODINIT_FUNC
PyInit__steps(void)
{
    str_tasks = PyUnicode_InternFromString("tasks");
    str_throw = PyUnicode_InternFromString("throw");
    str_close = PyUnicode_InternFromString("close");
    str_stats = PyUnicode_InternFromString("stats");
    str_context = PyUnicode_InternFromString("context");
    if (str_tasks == NULL || str_throw == NULL || str_close == NULL || str_stats == NULL ||
        str_context == NULL) {
        return NULL;
    }
    str_agent = PyUnicode_InternFromString("agent");
    str_tenant = PyUnicode_InternFromString("tenant");
    str_state = PyUnicode_InternFromString("state");
    str_capacity = PyUnicode_InternFromString("capacity");
    str_process = PyUnicode_InternFromString("process");
    str_id = PyUnicode_InternFromString("id");
    str_token_class = PyUnicode_InternFromString("token_class");
    str_kv_bytes = PyUnicode_InternFromString("kv_bytes");
    str_cpu_pct = PyUnicode_InternFromString("cpu_pct");
    if (str_agent == NULL || str_tenant == NULL || str_state == NULL || str_capacity == NULL ||
        str_process == NULL || str_id == NULL || str_token_class == NULL || str_kv_bytes == NULL ||
        str_cpu_pct == NULL) {
        return NULL;
    }
    PyObject *str_loop = PyUnicode_InternFromString("loop");
    if (str_loop == NULL) {
        return NULL;
    }
    kw_loop_context = PyTuple_Pack(2, str_loop, str_context);
    Py_DECREF(str_loop);
    if (kw_loop_context == NULL) {
        return NULL;
    }
    if (PyType_Ready(&StepClockType) < 0 || PyType_Ready(&SessionStatsType) < 0 ||
        PyType_Ready(&TimedType) < 0 || PyType_Ready(&FactoryType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&steps_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "StepClock", (PyObject *)&StepClockType) < 0 ||
        PyModule_AddObjectRef(m, "SessionStats", (PyObject *)&SessionStatsType) < 0 ||
        PyModule_AddObjectRef(m, "TimedCoroutine", (PyObject *)&TimedType) < 0 ||
        PyModule_AddObjectRef(m, "TaskFactory", (PyObject *)&FactoryType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
