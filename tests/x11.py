"""What a user does to an X window, with libX11 through ctypes: find it by title, close it the way a window manager's
close button does (a WM_DELETE_WINDOW message), press a key in it, and take a screenshot. No window manager, xdotool
or xwd needed under a bare Xvfb."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

KEY_PRESS, KEY_RELEASE, CLIENT_MESSAGE = 2, 3, 33
NO_EVENT_MASK, KEY_PRESS_MASK, KEY_RELEASE_MASK = 0, 1, 2
Z_PIXMAP, ALL_PLANES = 2, 0xFFFFFFFFFFFFFFFF


class _ClientMessage(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                ("format", ctypes.c_int), ("data", ctypes.c_long * 5)]


class _KeyEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("root", ctypes.c_ulong),
                ("subwindow", ctypes.c_ulong), ("time", ctypes.c_ulong), ("x", ctypes.c_int), ("y", ctypes.c_int),
                ("x_root", ctypes.c_int), ("y_root", ctypes.c_int), ("state", ctypes.c_uint),
                ("keycode", ctypes.c_uint), ("same_screen", ctypes.c_int)]


class _Event(ctypes.Union):
    _fields_ = [("client", _ClientMessage), ("key", _KeyEvent), ("pad", ctypes.c_long * 24)]


class _Image(ctypes.Structure):  # the leading fields of Xlib's XImage
    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("xoffset", ctypes.c_int), ("format", ctypes.c_int),
                ("data", ctypes.POINTER(ctypes.c_ubyte)), ("byte_order", ctypes.c_int), ("bitmap_unit", ctypes.c_int),
                ("bitmap_bit_order", ctypes.c_int), ("bitmap_pad", ctypes.c_int), ("depth", ctypes.c_int),
                ("bytes_per_line", ctypes.c_int), ("bits_per_pixel", ctypes.c_int), ("red_mask", ctypes.c_ulong),
                ("green_mask", ctypes.c_ulong), ("blue_mask", ctypes.c_ulong)]


def available() -> bool:
    return ctypes.util.find_library("X11") is not None


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
                             ctypes.POINTER(ctypes.c_uint)]
    x.XFetchName.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_char_p)]
    x.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.POINTER(_Event)]
    x.XFlush.argtypes = x.XCloseDisplay.argtypes = [ctypes.c_void_p]
    x.XFree.argtypes = [ctypes.c_void_p]
    x.XStringToKeysym.restype = ctypes.c_ulong
    x.XStringToKeysym.argtypes = [ctypes.c_char_p]
    x.XKeysymToKeycode.restype = ctypes.c_ubyte
    x.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    x.XDisplayWidth.argtypes = x.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x.XGetImage.restype = ctypes.POINTER(_Image)
    x.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                            ctypes.c_ulong, ctypes.c_int]
    return x


@contextmanager
def _display(display: str) -> Iterator[tuple[ctypes.CDLL, int]]:
    x = _x11()
    dpy = x.XOpenDisplay(display.encode())
    if not dpy:
        raise OSError(f"cannot open X display {display}")
    try:
        yield x, dpy
    finally:
        x.XCloseDisplay(dpy)


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
    with _display(display) as (x, dpy):
        return _find(x, dpy, x.XDefaultRootWindow(dpy), title) is not None


def close_window(display: str, title: str) -> bool:
    """Ask the window called ``title`` on ``display`` (":97") to close; False when there is no such window."""
    with _display(display) as (x, dpy):
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


def press_key(display: str, title: str, key: str) -> bool:
    """Press and release ``key`` (an X keysym name: "q", "Escape") in the window called ``title``; False when there
    is no such window."""
    with _display(display) as (x, dpy):
        root = x.XDefaultRootWindow(dpy)
        window = _find(x, dpy, root, title)
        if window is None:
            return False
        keycode = x.XKeysymToKeycode(dpy, x.XStringToKeysym(key.encode()))
        if not keycode:
            raise ValueError(f"no key {key!r} on display {display}")
        for kind, mask in ((KEY_PRESS, KEY_PRESS_MASK), (KEY_RELEASE, KEY_RELEASE_MASK)):
            event = _Event()
            event.key.type, event.key.window, event.key.root = kind, window, root
            event.key.keycode, event.key.same_screen = keycode, 1
            x.XSendEvent(dpy, window, 1, mask, ctypes.byref(event))
        x.XFlush(dpy)
        return True


def screenshot(display: str) -> np.ndarray:
    """The whole screen as a BGR uint8 array (24/32-bit TrueColor screens, as Xvfb's)."""
    with _display(display) as (x, dpy):
        width, height = x.XDisplayWidth(dpy, 0), x.XDisplayHeight(dpy, 0)
        image = x.XGetImage(dpy, x.XDefaultRootWindow(dpy), 0, 0, width, height, ALL_PLANES, Z_PIXMAP)
        if not image:
            raise OSError(f"cannot read the screen of {display}")
        try:
            im = image.contents
            if im.bits_per_pixel != 32 or (im.red_mask, im.green_mask, im.blue_mask) != (0xFF0000, 0xFF00, 0xFF):
                raise ValueError(f"only 32-bit xRGB screens are read here, got {im.bits_per_pixel} bits per pixel")
            raw = np.ctypeslib.as_array(im.data, shape=(im.height * im.bytes_per_line,))
            rows = raw.reshape(im.height, im.bytes_per_line)[:, : im.width * 4].reshape(im.height, im.width, 4)
            # a pixel is the 32-bit value 0x00RRGGBB in the image's byte order
            bgr = rows[:, :, :3] if im.byte_order == 0 else rows[:, :, 3:0:-1]
            return np.ascontiguousarray(bgr)
        finally:
            x.XFree(im.data)
            x.XFree(image)
