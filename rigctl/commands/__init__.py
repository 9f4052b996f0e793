"""Sub-commands of the `rigctl` CLI; each module exposes `register(subparsers)`."""
