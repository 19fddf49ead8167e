/* coromethod.c - a C method that introspects as a coroutine function.
 *
 * asyncio defines sock_recv(), create_connection() and friends with
 * `async def`; ours are C functions returning an awaitable, which
 * inspect.iscoroutinefunction() (and so mock.patch's autospec, which then
 * makes an AsyncMock) took for plain functions. A CoroutineMethod wraps the
 * C method descriptor and borrows the signature of asyncio's own function
 * (its __code__, defaults and annotations): inspect sees a function-like
 * object whose code says "coroutine", with asyncio's parameters.
 *
 * Calls cost what a method descriptor's do: the type is a method
 * descriptor (Py_TPFLAGS_METHOD_DESCRIPTOR), so `loop.sock_recv(...)` calls
 * it with self first and makes no bound object; one vectorcall forwards to
 * the wrapped C method. Read as an attribute (`f = loop.sock_recv`) it
 * binds as a Python method, which is what inspect unwraps.
 */
#include "tl_coromethod.h"

typedef struct {
    PyObject_HEAD
    PyObject *method;       /* the C method descriptor it forwards to */
    PyObject *like;         /* asyncio's function of the same name */
    vectorcallfunc vectorcall;
} tl_coromethod;

static PyObject *coromethod_call(tl_coromethod *m, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames)
{
    return PyObject_Vectorcall(m->method, args, nargsf, kwnames);
}

static PyObject *coromethod_get(tl_coromethod *m, PyObject *obj, PyObject *type)
{
    TL_UNUSED(type);
    if (obj == NULL || obj == Py_None)
        return Py_NewRef((PyObject *)m);
    return PyMethod_New((PyObject *)m, obj);
}

static PyObject *coromethod_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    PyObject *method, *like;
    static char *kwlist[] = {"method", "like", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:CoroutineMethod", kwlist, &method, &like))
        return NULL;
    if (!PyCallable_Check(method) || !PyFunction_Check(like)) {
        PyErr_SetString(PyExc_TypeError,
                        "CoroutineMethod(method, like): a callable and a Python function");
        return NULL;
    }
    tl_coromethod *m = (tl_coromethod *)tp->tp_alloc(tp, 0);
    if (m == NULL)
        return NULL;
    m->method = Py_NewRef(method);
    m->like = Py_NewRef(like);
    m->vectorcall = (vectorcallfunc)coromethod_call;
    return (PyObject *)m;
}

static int coromethod_traverse(tl_coromethod *m, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(m));
    Py_VISIT(m->method);
    Py_VISIT(m->like);
    return 0;
}

static int coromethod_clear(tl_coromethod *m)
{
    Py_CLEAR(m->method);
    Py_CLEAR(m->like);
    return 0;
}

static void coromethod_dealloc(tl_coromethod *m)
{
    PyTypeObject *tp = Py_TYPE(m);
    PyObject_GC_UnTrack(m);
    coromethod_clear(m);
    tp->tp_free(m);
    Py_DECREF(tp);
}

static PyObject *coromethod_repr(tl_coromethod *m)
{
    return PyUnicode_FromFormat("<coroutine method %R>", m->method);
}

/* What inspect reads of a function, from asyncio's; the name and doc are
 * the C method's own. */
static PyObject *coromethod_like(tl_coromethod *m, void *name)
{
    return PyObject_GetAttrString(m->like, (const char *)name);
}

static PyObject *coromethod_own(tl_coromethod *m, void *name)
{
    return PyObject_GetAttrString(m->method, (const char *)name);
}

static PyGetSetDef coromethod_getset[] = {
    {"__code__", (getter)coromethod_like, NULL, NULL, "__code__"},
    {"__defaults__", (getter)coromethod_like, NULL, NULL, "__defaults__"},
    {"__kwdefaults__", (getter)coromethod_like, NULL, NULL, "__kwdefaults__"},
    {"__annotations__", (getter)coromethod_like, NULL, NULL, "__annotations__"},
    {"__name__", (getter)coromethod_own, NULL, NULL, "__name__"},
    {"__qualname__", (getter)coromethod_own, NULL, NULL, "__qualname__"},
    {"__doc__", (getter)coromethod_own, NULL, NULL, "__doc__"},
    {"__objclass__", (getter)coromethod_own, NULL, NULL, "__objclass__"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef coromethod_members[] = {
    {"__vectorcalloffset__", Py_T_PYSSIZET, offsetof(tl_coromethod, vectorcall), Py_READONLY,
     NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot coromethod_slots[] = {
    {Py_tp_new, coromethod_new},
    {Py_tp_dealloc, coromethod_dealloc},
    {Py_tp_traverse, coromethod_traverse},
    {Py_tp_clear, coromethod_clear},
    {Py_tp_repr, coromethod_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, coromethod_get},
    {Py_tp_getset, coromethod_getset},
    {Py_tp_members, coromethod_members},
    {Py_tp_doc, "CoroutineMethod(method, like)\n--\n\n"
                "A C method that introspects as the coroutine function `like`."},
    {0, NULL},
};

PyType_Spec tl_coromethod_spec = {
    .name = "tonio_loop._core.CoroutineMethod",
    .basicsize = sizeof(tl_coromethod),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = coromethod_slots,
};
