package server

// The web router: which tunnel serves a host name (and, for http, a path
// prefix) on the shared HTTP and HTTPS ports. A name belongs to one
// client at a time; that client's tunnels may split it by path. A name
// whose tunnel went away is remembered for a while, so a visitor learns
// the tunnel is offline (502) rather than unknown (404).

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// route is one (name, prefix) of a web tunnel.
type route struct {
	host   string // normalized; "*.domain" for a wildcard
	prefix string // "" for every path
	ss     *session
	pl     *publicListener
}

// router holds the routes of one shared port.
type router struct {
	mu      sync.RWMutex
	hosts   map[string][]*route  // by host, longest prefix first
	offline map[string]time.Time // names whose tunnel went away, until
}

func newRouter() *router {
	return &router{hosts: map[string][]*route{}, offline: map[string]time.Time{}}
}

// hostHeldError refuses a name another client holds.
type hostHeldError struct{ host, holder string }

func (e *hostHeldError) Error() string {
	return fmt.Sprintf("host name %s is held by client %q; the tunnel comes up when that client lets go", e.host, e.holder)
}

// claim gives pl's routes to ss, all or none.
func (r *router) claim(ss *session, pl *publicListener, hosts, prefixes []string) error {
	if len(prefixes) == 0 {
		prefixes = []string{""}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range hosts {
		for _, rt := range r.hosts[h] {
			if rt.ss.client != ss.client {
				return &hostHeldError{host: h, holder: rt.ss.client}
			}
			for _, p := range prefixes {
				if rt.prefix == p && rt.ss == ss {
					return fmt.Errorf("host name %s%s is already served by tunnel %q of this client", h, p, rt.pl.name)
				}
			}
		}
	}
	for _, h := range hosts {
		for _, p := range prefixes {
			// A session of the same client that is being replaced may
			// still hold the route: ours now.
			list := r.hosts[h][:0:0]
			for _, rt := range r.hosts[h] {
				if rt.prefix != p {
					list = append(list, rt)
				}
			}
			list = append(list, &route{host: h, prefix: p, ss: ss, pl: pl})
			sort.SliceStable(list, func(i, j int) bool { return len(list[i].prefix) > len(list[j].prefix) })
			r.hosts[h] = list
		}
		delete(r.offline, h)
	}
	return nil
}

// release drops pl's routes; remember keeps the names known as offline
// until then.
func (r *router) release(pl *publicListener, until time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for h, list := range r.hosts {
		kept := list[:0:0]
		for _, rt := range list {
			if rt.pl != pl {
				kept = append(kept, rt)
			}
		}
		if len(kept) == len(list) {
			continue
		}
		if len(kept) == 0 {
			delete(r.hosts, h)
			if !until.IsZero() {
				r.offline[h] = until
			}
		} else {
			r.hosts[h] = kept
		}
	}
}

// lookup finds the route for host (normalized) and path: the most
// specific name (the name itself, then wildcards from the closest
// domain up), then the longest prefix. offline says a name without a
// route had one until recently.
func (r *router) lookup(host, path string) (rt *route, offline bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	keys := []string{host}
	for rest := host; ; {
		_, after, ok := strings.Cut(rest, ".")
		if !ok || !strings.Contains(after, ".") {
			break
		}
		keys = append(keys, "*."+after)
		rest = after
	}
	for _, k := range keys {
		list, ok := r.hosts[k]
		if !ok {
			if until, ok := r.offline[k]; ok && time.Now().Before(until) {
				return nil, true
			}
			continue
		}
		for _, rt := range list {
			if strings.HasPrefix(path, rt.prefix) {
				return rt, false
			}
		}
		return nil, false // the name is served, not this path
	}
	return nil, false
}

// sweep forgets offline names past their time.
func (r *router) sweep(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for h, until := range r.offline {
		if now.After(until) {
			delete(r.offline, h)
		}
	}
}
