"""Close an X window the way a window manager's close button does (a WM_DELETE_WINDOW message), with libX11 through
ctypes: no window manager or xdotool needed under a bare Xvfb."""

from __future__ import annotations

import ctypes
import ctypes.util

CLIENT_MESSAGE = 33
NO_EVENT_MASK = 0


class _ClientMessage(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                ("format", ctypes.c_int), ("data", ctypes.c_long * 5)]  # fmt: skip


class _Event(ctypes.Union):
    _fields_ = [("client", _ClientMessage), ("pad", ctypes.c_long * 24)]


def _x11() -> ctypes.CDLL:
    name = ctypes.util.find_library("X11")
    if not name:
        raise OSError("libX11 not found")
    x = ctypes.CDLL(name)
    x.XOpenDisplay.restype = ctypes.c_void_p
    x.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x.XDefaultRootWindow.restype = ctypes.c_ulong
    x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x.XInternAtom.restype = ctypes.c_ulong
    x.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x.XQueryTree.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong),
                             ctypes.POINTER(ctypes.c_ulong), ctypes.POINTER(ctypes.POINTER(ctypes.c_ulong)),
                             ctypes.POINTER(ctypes.c_uint)]  # fmt: skip
    x.XFetchName.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_char_p)]
    x.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.POINTER(_Event)]
    x.XFlush.argtypes = x.XCloseDisplay.argtypes = [ctypes.c_void_p]
    x.XFree.argtypes = [ctypes.c_void_p]
    return x


def _find(x: ctypes.CDLL, dpy: int, window: int, title: str) -> int | None:
    name = ctypes.c_char_p()
    if x.XFetchName(dpy, window, ctypes.byref(name)) and name.value is not None:
        found = name.value.decode(errors="replace") == title
        x.XFree(name)
        if found:
            return window
    root, parent, children, n = ctypes.c_ulong(), ctypes.c_ulong(), ctypes.POINTER(ctypes.c_ulong)(), ctypes.c_uint()
    if not x.XQueryTree(dpy, window, ctypes.byref(root), ctypes.byref(parent), ctypes.byref(children), ctypes.byref(n)):
        return None
    try:
        for i in range(n.value):
            hit = _find(x, dpy, children[i], title)
            if hit:
                return hit
    finally:
        if children:
            x.XFree(children)
    return None


def window_exists(display: str, title: str) -> bool:
    x = _x11()
    dpy = x.XOpenDisplay(display.encode())
    if not dpy:
        raise OSError(f"cannot open X display {display}")
    try:
        return _find(x, dpy, x.XDefaultRootWindow(dpy), title) is not None
    finally:
        x.XCloseDisplay(dpy)


def close_window(display: str, title: str) -> bool:
    """Ask the window called ``title`` on ``display`` (":97") to close; False when there is no such window."""
    x = _x11()
    dpy = x.XOpenDisplay(display.encode())
    if not dpy:
        raise OSError(f"cannot open X display {display}")
    try:
        window = _find(x, dpy, x.XDefaultRootWindow(dpy), title)
        if window is None:
            return False
        event = _Event()
        event.client.type = CLIENT_MESSAGE
        event.client.window = window
        event.client.message_type = x.XInternAtom(dpy, b"WM_PROTOCOLS", 0)
        event.client.format = 32
        event.client.data[0] = x.XInternAtom(dpy, b"WM_DELETE_WINDOW", 0)
        x.XSendEvent(dpy, window, 0, NO_EVENT_MASK, ctypes.byref(event))
        x.XFlush(dpy)
        return True
    finally:
        x.XCloseDisplay(dpy)
