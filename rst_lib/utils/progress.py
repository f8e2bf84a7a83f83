"""Progress bars that leave plain text behind: ``tqdm`` as ``tqdm.auto`` picks it (a live
ipywidgets bar in a notebook, text in a terminal or log), except that a notebook bar,
once closed, is replaced in its output by its last line as text (nothing, for a
``leave=False`` bar) and its widgets are closed.

Why: a widget output holds only a reference to a model living in the kernel's front end.
Saved and reopened (or after a page reload, a kernel restart, in nbconvert's report), the
model is gone and JupyterLab shows "Error displaying widget: model not found" where the
bar was; a text output shows what the bar said, everywhere.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm as auto_tqdm


class tqdm(auto_tqdm):  # noqa: N801 - a drop-in for tqdm.auto.tqdm
    """``tqdm.auto.tqdm``; in a notebook its bar is shown through a display handle and
    replaced by text when it closes."""

    def __init__(self, *args, **kwargs):
        self.handle = None
        # tqdm.auto chose tqdm.notebook (a kernel with ipywidgets): not imported here, so a
        # terminal does not pay for ipywidgets
        self.widget_bar = any(c.__module__ == "tqdm.notebook" for c in type(self).__mro__)
        if self.widget_bar:
            show = kwargs.pop("display", True)
            kwargs["display"] = False  # shown below, through a handle that can replace it
            super().__init__(*args, **kwargs)
            if show and not self.disable and self.delay <= 0:
                self.show()
        else:
            super().__init__(*args, **kwargs)

    def show(self) -> None:
        # IPython's display, as tqdm.notebook (loaded: this is one of its bars) imported it;
        # not imported here, so that a terminal does not pay for IPython
        display = sys.modules["tqdm.notebook"].display
        self.handle = display(self.container, display_id=True)
        self.displayed = True

    def display(self, *args, **kwargs):  # tqdm.notebook's redraw (a terminal bar: tqdm's own)
        if not self.widget_bar:  # tqdm.std's display takes no check_delay
            return super().display(*args, **kwargs)
        check_delay = kwargs.pop("check_delay", True)
        if check_delay and self.delay > 0 and not self.displayed:
            self.show()  # a delayed bar appears now (through the handle)
        return super().display(*args, check_delay=False, **kwargs)

    def close(self):
        super().close()
        if not self.widget_bar or self.handle is None:
            return
        failed = bool(self.total and self.n < self.total)  # tqdm.notebook's own test
        text = self.format_meter(**self.format_dict) if self.leave or failed else ""
        self.handle.update({"text/plain": text}, raw=True)
        self.handle = None
        for widget in (*self.container.children, self.container):
            widget.close()
