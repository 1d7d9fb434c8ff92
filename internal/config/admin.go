package config

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/BurntSushi/toml"
)

// Admin is a daemon's admin endpoint ([admin]): status, actions, health
// probes and metrics over HTTP. Off unless Socket or Address is set.
type Admin struct {
	// Socket is a unix socket path, created with mode 0600: only the
	// daemon's user (and root) can use it. Under systemd, a directory
	// from RuntimeDirectory= (/run/tunneld/admin.sock).
	Socket string `toml:"socket"`
	// Address is a TCP host:port. A loopback address may go without a
	// token; any other needs one.
	Address string `toml:"address"`
	// Token, when set, must come with every request but the health
	// probes, as "Authorization: Bearer TOKEN". TUNNEL_ADMIN_TOKEN in the
	// environment overrides it.
	Token string `toml:"token"`
	// Pprof serves Go's runtime profiles (heap, goroutines, CPU, trace)
	// under /debug/pprof/, behind the token: for finding where a daemon's
	// memory or CPU goes. A CPU profile or trace costs while it runs.
	Pprof bool `toml:"pprof"`
}

// Enabled reports whether the daemon serves an admin endpoint.
func (a Admin) Enabled() bool { return a.Socket != "" || a.Address != "" }

// Where names the endpoint for messages: the socket path or the address.
func (a Admin) Where() string {
	if a.Socket != "" {
		return a.Socket
	}
	return a.Address
}

func (a *Admin) applyEnv() {
	if t := os.Getenv("TUNNEL_ADMIN_TOKEN"); t != "" {
		a.Token = t
	}
}

func checkAdmin(ps *problems, a Admin) {
	switch {
	case a.Socket != "" && a.Address != "":
		ps.add("admin", "set socket or address, not both")
	case a.Socket != "" && !filepath.IsAbs(a.Socket):
		ps.add("admin.socket", "%q is not an absolute path (the status and reload commands find the socket by it, from any directory)", a.Socket)
	case a.Address != "":
		if err := hostPort(a.Address, false); err != nil {
			ps.add("admin.address", "%v", err)
			break
		}
		host, _, _ := net.SplitHostPort(a.Address)
		ip := net.ParseIP(host)
		if ip == nil {
			ps.add("admin.address", "%q: the host must be an IP address, so what it binds to is plain (e.g. \"127.0.0.1:7001\")", a.Address)
		} else if !ip.IsLoopback() && a.Token == "" {
			ps.add("admin.address", "%s is not a loopback address, and admin.token is empty: the admin API can close sessions and reload the config, "+
				"so off loopback it needs a token (or use admin.socket)", a.Address)
		}
	}
	if a.Token != "" {
		if bits := tokenBits(a.Token); len(a.Token) < minTokenLen || bits < minTokenBits {
			ps.add("admin.token", "is too weak (%d characters, about %.0f bits; want at least %d characters and %d bits): use e.g. `openssl rand -hex 16`",
				len(a.Token), bits, minTokenLen, minTokenBits)
		}
	}
}

// LoadAdmin reads only the [admin] table of a daemon's config file, for
// the commands that ask the running daemon: they must find it even when
// the rest of the file no longer validates (a reload then says why).
func LoadAdmin(path string) (Admin, error) {
	data, err := readFile(path)
	if err != nil {
		return Admin{}, err
	}
	var v struct {
		Admin Admin `toml:"admin"`
	}
	if _, err := toml.Decode(string(data), &v); err != nil {
		return Admin{}, fmt.Errorf("%s: %w", path, err)
	}
	v.Admin.applyEnv()
	ps := &problems{file: path, lines: keyLines(data)}
	checkAdmin(ps, v.Admin)
	return v.Admin, ps.err()
}
