"""The ops: one module per op (``<op>.py``: the public function, ``reference``, argument
checks, ``FAMILY`` and its registration through ``_dispatch.register``), and the composites
built on them (``gradient_penalty``, ``r1_penalty``, over ``penalty_core``).

``check_impl(impl, device)`` refuses an ``impl`` that cannot run every op on a device."""
from ._dispatch import IMPLS, check_impl

__all__ = ["IMPLS", "check_impl"]
