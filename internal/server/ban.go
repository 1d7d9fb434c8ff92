package server

// Bans: a kicked client can be kept out for a while. Its hellos are
// refused with CodeBanned, which tunnelc takes as passing (it retries
// with its backoff) rather than as a refusal for good. Bans live in
// memory: a restart lifts them.

import (
	"fmt"
	"sort"
	"time"

	"github.com/tunnel-dev/tunnel/internal/admin"
)

// maxBan bounds a ban: removing a client for good is a config change.
const maxBan = 30 * 24 * time.Hour

type ban struct {
	until  time.Time
	reason string
}

// Ban keeps client out until now+d, with reason.
func (s *Server) Ban(client string, d time.Duration, reason string) error {
	if d <= 0 || d > maxBan {
		return admin.BadRequest("ban %s is out of range (more than 0, at most %s; to remove a client for good, take it out of [[clients]] and reload)", d, maxBan)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bans == nil {
		s.bans = map[string]ban{}
	}
	s.bans[client] = ban{until: time.Now().Add(d), reason: reason}
	s.log.Warn("client banned by the operator", "client", client, "for", d, "reason", reason)
	return nil
}

// Unban lifts client's ban; false when there was none.
func (s *Server) Unban(client string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.bans[client]
	delete(s.bans, client)
	if ok {
		s.log.Info("ban lifted by the operator", "client", client)
	}
	return ok
}

// banned is why client may not connect now, "" when it may.
func (s *Server) banned(client string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bans[client]
	if !ok {
		return ""
	}
	if time.Now().After(b.until) {
		delete(s.bans, client)
		return ""
	}
	return fmt.Sprintf("banned by the server's operator until %s (%s); tunnelc keeps trying", b.until.UTC().Format(time.RFC3339), b.reason)
}

// BanStatus is one ban, for the status.
type BanStatus struct {
	Client string    `json:"client"`
	Until  time.Time `json:"until"`
	Reason string    `json:"reason"`
}

// Bans lists the bans in force.
func (s *Server) Bans() []BanStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []BanStatus{}
	now := time.Now()
	for c, b := range s.bans {
		if now.After(b.until) {
			delete(s.bans, c)
			continue
		}
		out = append(out, BanStatus{Client: c, Until: b.until, Reason: b.reason})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Client < out[j].Client })
	return out
}
