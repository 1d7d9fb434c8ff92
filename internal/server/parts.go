package server

import "sync"

// parts runs the goroutines of one session and waits for all of them: the
// stream refuser, the public accept loops, each public connection's join,
// pending tunnels' retries and the wait after a goodbye. The session's run
// step owns it and waits last. Once the wait has begun nothing new starts
// (Go and enter report false), so nothing can outlive the session.
type parts struct {
	mu      sync.Mutex
	waiting bool
	wg      sync.WaitGroup
}

// Go runs f as a part, unless the wait has begun.
func (p *parts) Go(f func()) bool {
	if !p.enter() {
		return false
	}
	go func() {
		defer p.leave()
		f()
	}()
	return true
}

// enter counts work already running on some goroutine (a timer's, a join's
// callback to come) as a part, unless the wait has begun; on true the
// caller calls leave when it is done.
func (p *parts) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waiting {
		return false
	}
	p.wg.Add(1)
	return true
}

func (p *parts) leave() { p.wg.Done() }

// wait returns when every part has ended; from its start no part starts.
func (p *parts) wait() {
	p.mu.Lock()
	p.waiting = true
	p.mu.Unlock()
	p.wg.Wait()
}
