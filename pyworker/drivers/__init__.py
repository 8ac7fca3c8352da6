"""The built-in metadata drivers, each a module registered through this
package's entry points (setup.py), as third-party drivers are."""
