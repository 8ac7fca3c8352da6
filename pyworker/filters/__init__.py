"""The built-in stream filters, each a module registered through this
package's entry points (setup.py), as third-party filters are."""
