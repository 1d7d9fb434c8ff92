package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Port leases: a port the server picked for a tunnel (remote_port = 0)
// stays that tunnel's for a lease period after the tunnel goes down, so a
// restart of either side gives the client its old public address back.
// Other clients get a leased port only when no other allowed port is free.
// With a state directory the leases survive a restart of tunneld; without
// one they live in memory.

// leaseFile is the leases' file in the state directory.
const leaseFile = "port-leases.json"

// lease is one (client, tunnel) -> port record. Until the zero time means
// the tunnel holds the port right now; otherwise the lease runs out then.
type lease struct {
	Client string    `json:"client"`
	Tunnel string    `json:"tunnel"`
	Port   int       `json:"port"`
	Until  time.Time `json:"until,omitzero"`
}

type leases struct {
	mu   sync.Mutex
	path string // "" keeps them in memory only
	ttl  time.Duration
	log  *slog.Logger
	m    map[string]*lease // by leaseKey
	now  func() time.Time
}

func leaseKey(client, tunnel string) string { return client + "\x00" + tunnel }

// openLeases loads the leases of dir ("" for none). A lease that was held
// when tunneld stopped starts its period at load: its client is presumably
// reconnecting. ttl 0 turns leases off.
func openLeases(dir string, ttl time.Duration, log *slog.Logger) (*leases, error) {
	l := &leases{ttl: ttl, log: log, m: map[string]*lease{}, now: time.Now}
	if dir == "" || ttl == 0 {
		return l, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	l.path = filepath.Join(dir, leaseFile)
	data, err := os.ReadFile(l.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// First start: write an empty file now, so an unwritable
		// directory is reported at start, not at the first lease.
		return l, l.saveLocked()
	case err != nil:
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	var list []lease
	if err := json.Unmarshal(data, &list); err != nil {
		// A damaged file costs the leases, not the server.
		log.Warn("port leases unreadable; starting without them", "file", l.path, "err", err)
		return l, l.saveLocked()
	}
	now := l.now()
	for i := range list {
		le := list[i]
		if le.Until.IsZero() {
			le.Until = now.Add(ttl)
		}
		if le.Until.After(now) && le.Port > 0 {
			l.m[leaseKey(le.Client, le.Tunnel)] = &le
		}
	}
	return l, nil
}

// of returns the port leased to (client, tunnel), or 0.
func (l *leases) of(client, tunnel string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if le := l.m[leaseKey(client, tunnel)]; le != nil && l.liveLocked(le) {
		return le.Port
	}
	return 0
}

// holder returns who else holds a live lease on port, if anyone does.
func (l *leases) holder(port int, client, tunnel string) (*lease, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, le := range l.m {
		if le.Port == port && k != leaseKey(client, tunnel) && l.liveLocked(le) {
			c := *le
			return &c, true
		}
	}
	return nil, false
}

func (l *leases) liveLocked(le *lease) bool { return le.Until.IsZero() || le.Until.After(l.now()) }

// hold records that (client, tunnel) holds port now; any other lease on
// the port ends (its port went to someone else).
func (l *leases) hold(client, tunnel string, port int) {
	if l.ttl == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, le := range l.m {
		if le.Port == port || !l.liveLocked(le) {
			delete(l.m, k)
		}
	}
	l.m[leaseKey(client, tunnel)] = &lease{Client: client, Tunnel: tunnel, Port: port}
	l.persistLocked()
}

// release starts the lease period of client's held leases on ports.
func (l *leases) release(client string, ports []int) {
	if l.ttl == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	changed := false
	until := l.now().Add(l.ttl)
	for _, le := range l.m {
		if le.Client != client || !le.Until.IsZero() {
			continue
		}
		for _, p := range ports {
			if le.Port == p {
				le.Until, changed = until, true
			}
		}
	}
	if changed {
		l.persistLocked()
	}
}

// persistLocked saves the leases; a failure is logged, not fatal: the
// leases still work in memory.
func (l *leases) persistLocked() {
	if l.path == "" {
		return
	}
	if err := l.saveLocked(); err != nil {
		l.log.Warn("port leases not saved; they will not survive a restart", "err", err)
	}
}

// saveLocked writes the file whole or not at all (write, sync, rename).
func (l *leases) saveLocked() error {
	list := make([]lease, 0, len(l.m))
	for _, le := range l.m {
		list = append(list, *le)
	}
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	tmp := l.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("state_dir: write %s: %w", l.path, err)
	}
	return nil
}
