"""QEMU guests as a payload: QMP (qmp.py), what migration asks of each QEMU (vm.py), the
engine's side of it (migration.py), and a tiny guest of our own to try it on (guest/)."""
