"""nginx in front of the app: the site it serves (plain HTTP until a certificate exists,
then HTTPS with a redirect), the upstream file naming the active slot, and what nginx
really runs, asked through its loopback-only check server.
"""

import os

from .system import Failed, run, write_atomic



def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def upstream_conf(paths, port, backup=None):
    """The upstream file: the slot nginx sends traffic to, and while a deploy is watched,
    the slot before as the backup nginx tries when the new one does not answer."""
    fallback = f"    server 127.0.0.1:{int(backup)} backup;\n" if backup else ""
    return ("# Written by imgforge-vm: the app slot nginx sends traffic to.\n"
            f"upstream {paths.upstream} {{\n"
            f"    server 127.0.0.1:{int(port)};\n{fallback}"
            "    keepalive 8;\n"
            "}\n")


def checked(path, text):
    """Writes text to path (an nginx file) if it differs; the file before comes back when
    `nginx -t` refuses the new one. Returns whether it changed."""
    before = read(path)
    if before == text:
        return False
    write_atomic(path, text)
    try:
        run("nginx", "-t", capture=True)
    except Failed:
        if before is None:
            os.remove(path)
        else:
            write_atomic(path, before)
        raise
    return True


def point_upstream(paths, port, backup=None):
    return checked(paths.nginx_upstream, upstream_conf(paths, port, backup))


def install_site(paths, tls):
    """Makes the HTTPS site (tls) or the plain HTTP one nginx's live site."""
    return checked(paths.nginx_site, read(paths.nginx_site_tls if tls else paths.nginx_site_http))


def tls_installed(paths):
    site = read(paths.nginx_site)
    return site is not None and site == read(paths.nginx_site_tls)


def reload(started_only=False):
    """nginx reads its files again; requests in flight finish on the old workers. With
    `started_only`, a stopped nginx stays stopped (it reads them when it starts)."""
    run("systemctl", "try-reload-or-restart" if started_only else "reload-or-restart", "nginx.service")


def user_path(paths, conf):
    """The health path the way users come (the public server, HTTPS once its site is
    installed, with the domain's name): the HTTP status, 0 when nothing answers."""
    name = conf.get("domain") or "localhost"
    port, scheme = (443, "https") if tls_installed(paths) else (80, "http")
    proc = run("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
               "--resolve", f"{name}:{port}:127.0.0.1", f"{scheme}://{name}{conf['health_path']}",
               check=False, capture=True, quiet=True)
    return int(proc.stdout) if proc.stdout.isdigit() else 0


def answers(paths, conf):
    return 0 < user_path(paths, conf) < 400
