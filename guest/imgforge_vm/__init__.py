"""imgforge-vm: the program that deploys and runs the app on the VM imgforge rendered.

It reads the deployment from deploy.json (see layout.json for where) and runs every
command as an argument list; it records what it did in status.json.
"""
