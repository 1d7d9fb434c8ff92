package server

// HoldersOf, for tests, is how many listeners hold client's tunnel's counts: 0 once
// nothing serves it, so that they can be forgotten.
func (s *Server) HoldersOf(client, tunnel string) int {
	s.statsMu.Lock()
	st := s.stats[client+"\x00"+tunnel]
	s.statsMu.Unlock()
	if st == nil {
		return 0
	}
	return st.Holders()
}
