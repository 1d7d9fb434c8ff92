// Package config holds the TOML configuration of tunneld and tunnelc: the
// types, their defaults, strict decoding (an unknown key is an error naming
// its line) and validation that reports every problem at once, each naming
// the file, the line and the key.
//
// It must not touch the network: addresses are checked for form only.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/tunnel-dev/tunnel/internal/sockopt"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// Duration is a time.Duration written in TOML as a Go duration string ("15s").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("not a duration (want e.g. \"15s\", \"500ms\", \"2m\"): %q", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count written in TOML as a string with a binary unit
// ("16MiB", "512KiB", "1GiB") or a bare number of bytes.
type Size uint64

// UnmarshalText implements encoding.TextUnmarshaler.
func (z *Size) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > (1<<62)/mult {
		return fmt.Errorf("not a size (want e.g. \"16MiB\", \"512KiB\", \"1GiB\"): %q", b)
	}
	*z = Size(n * mult)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (z Size) MarshalText() ([]byte, error) {
	switch {
	case z != 0 && z%(1<<30) == 0:
		return fmt.Appendf(nil, "%dGiB", z>>30), nil
	case z != 0 && z%(1<<20) == 0:
		return fmt.Appendf(nil, "%dMiB", z>>20), nil
	case z != 0 && z%(1<<10) == 0:
		return fmt.Appendf(nil, "%dKiB", z>>10), nil
	}
	return fmt.Appendf(nil, "%d", uint64(z)), nil
}

// String is z as written in TOML.
func (z Size) String() string { b, _ := z.MarshalText(); return string(b) }

// Window is how far stream windows may grow on long, fast paths
// ([window]): each stream's receive window grows with the bandwidth-delay
// product the session measures, from 4 MiB up to StreamMax, while the
// grown window times the open streams stays within SessionBudget.
// stream_max = "4MiB" turns the growth off.
type Window struct {
	StreamMax     Size `toml:"stream_max"`
	SessionBudget Size `toml:"session_budget"`
}

// DefaultWindow is what [window] defaults to: windows grow to 16 MiB
// (670 Mbit/s per connection at 200 ms), within 64 MiB per session.
var DefaultWindow = Window{StreamMax: 16 << 20, SessionBudget: 64 << 20}

// DefaultResumeWindow is how long both daemons hold a lost session's
// connections for it to be resumed, unless configured otherwise.
const DefaultResumeWindow = 30 * time.Second

// maxResumeWindow bounds resume_window: every held connection keeps its
// sockets, and up to a window of unacknowledged data, for that long.
const maxResumeWindow = 10 * time.Minute

func checkResumeWindow(ps *problems, d Duration) {
	if d < 0 || d > Duration(maxResumeWindow) {
		ps.add("resume_window", "%s is out of range (0, which turns resumption off, to %s)", d.D(), maxResumeWindow)
	}
}

// minStreamMax is the streams' starting window, below which stream_max
// means nothing (mux.DefaultStreamWindow).
const minStreamMax = 4 << 20

func checkWindow(ps *problems, w Window) {
	if w.StreamMax < minStreamMax || w.StreamMax > 1<<30 {
		ps.add("window.stream_max", "%s is out of range (4MiB, which turns window growth off, to 1GiB)", w.StreamMax)
	}
	if w.SessionBudget < w.StreamMax || w.SessionBudget > 64<<30 {
		ps.add("window.session_budget", "%s is out of range (window.stream_max, %s, to 64GiB)", w.SessionBudget, w.StreamMax)
	}
}

// KeepAlive is the TCP keepalive of one leg. idle = 0 turns it off.
type KeepAlive struct {
	Idle     Duration `toml:"idle"`
	Interval Duration `toml:"interval"`
	Count    int      `toml:"count"`
}

// Sock converts k for package sockopt.
func (k KeepAlive) Sock() sockopt.KeepAlive {
	return sockopt.KeepAlive{Idle: k.Idle.D(), Interval: k.Interval.D(), Count: k.Count}
}

// Session is the liveness of the client-server session: TCP keepalive,
// TCP_USER_TIMEOUT, and the application heartbeat.
type Session struct {
	KeepAlive
	UserTimeout       Duration `toml:"user_timeout"`
	HeartbeatInterval Duration `toml:"heartbeat_interval"`
	HeartbeatTimeout  Duration `toml:"heartbeat_timeout"`
}

// Default keepalive settings (the README's liveness section): a dead
// session is found within 30 s, a dead public or local peer within 60 s.
var (
	DefaultSession = Session{
		KeepAlive:         KeepAlive{Idle: Duration(15 * time.Second), Interval: Duration(5 * time.Second), Count: 3},
		UserTimeout:       Duration(30 * time.Second),
		HeartbeatInterval: Duration(10 * time.Second),
		HeartbeatTimeout:  Duration(10 * time.Second),
	}
	DefaultLeg = KeepAlive{Idle: Duration(30 * time.Second), Interval: Duration(10 * time.Second), Count: 3}
)

// Log is the logging setup shared by both daemons.
type Log struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// SlogLevel parses the level; Validate has already checked it.
func (l Log) SlogLevel() slog.Level {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(l.Level))
	return lv
}

// Problem is one thing wrong with a config file.
type Problem struct {
	File string
	Line int // 0 when the key is not in the file (a default or a missing key)
	Key  string
	Msg  string
}

func (p Problem) Error() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	if p.Key == "" {
		return fmt.Sprintf("%s: %s", loc, p.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", loc, p.Key, p.Msg)
}

// problems collects Problems with line numbers from the file's key index.
type problems struct {
	file  string
	lines map[string]int
	list  []error
}

func (ps *problems) add(key, format string, args ...any) {
	ps.list = append(ps.list, Problem{File: ps.file, Line: ps.lines[key], Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (ps *problems) err() error { return errors.Join(ps.list...) }

// decode strictly decodes data into v: syntax errors and type errors carry
// their line; unknown keys are reported with theirs. It returns the key
// index used to put line numbers on later validation problems.
func decode(file string, data []byte, v any) (map[string]int, error) {
	lines := keyLines(data)
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			p := Problem{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
			if p.Line == 0 {
				p.Line = lines[pe.LastKey]
			}
			return lines, p
		}
		// Type errors are plain errors shaped "toml: line N (last key "k"): msg".
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			ln, _ := strconv.Atoi(m[1])
			return lines, Problem{File: file, Line: ln, Key: m[2], Msg: m[3]}
		}
		return lines, fmt.Errorf("%s: %w", file, err)
	}
	ps := &problems{file: file, lines: lines}
	for _, k := range md.Undecoded() {
		ps.add(k.String(), "unknown key (check its spelling and the table it is in)")
	}
	return lines, ps.err()
}

var typeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// keyLines maps each dotted key in a TOML document to the line that sets or
// opens it. BurntSushi/toml knows these positions but does not export them;
// a line scanner is enough for the documents we accept (standard tables,
// arrays of tables, dotted and quoted keys). Multi-line strings are skipped.
func keyLines(data []byte) map[string]int {
	out := map[string]int{}
	var table []string
	// elem is the current array-of-tables element's indexed name
	// ("clients[1]"), so that each element's keys have lines of their own.
	elem := ""
	arrays := map[string]int{}
	inMulti := ""
	for i, raw := range strings.Split(string(data), "\n") {
		ln := i + 1
		line := strings.TrimSpace(raw)
		if inMulti != "" {
			if strings.Contains(line, inMulti) {
				inMulti = ""
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "[[") {
			name := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(stripComment(line[2:])), "]]"))
			table = splitKey(name)
			key := strings.Join(table, ".")
			// Undecoded() names elements of arrays of tables without an index,
			// so the first occurrence keeps the line.
			if _, ok := out[key]; !ok {
				out[key] = ln
			}
			elem = fmt.Sprintf("%s[%d]", key, arrays[key])
			out[elem] = ln
			arrays[key]++
			continue
		}
		if line[0] == '[' {
			name := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(stripComment(line[1:])), "]"))
			table = splitKey(name)
			elem = ""
			out[strings.Join(table, ".")] = ln
			continue
		}
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			continue
		}
		k := append(append([]string{}, table...), splitKey(strings.TrimSpace(line[:eq]))...)
		key := strings.Join(k, ".")
		if _, ok := out[key]; !ok {
			out[key] = ln
		}
		if elem != "" {
			out[elem+"."+strings.Join(splitKey(strings.TrimSpace(line[:eq])), ".")] = ln
		}
		val := strings.TrimSpace(line[eq+1:])
		for _, q := range []string{`"""`, `'''`} {
			if strings.HasPrefix(val, q) && !strings.Contains(val[3:], q) {
				inMulti = q
			}
		}
	}
	return out
}

func stripComment(s string) string {
	if i := strings.IndexByte(s, '#'); i >= 0 {
		return s[:i]
	}
	return s
}

// splitKey splits a TOML dotted key, honouring quotes.
func splitKey(s string) []string {
	var parts []string
	var cur strings.Builder
	quote := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '"' || c == '\'':
			quote = c
		case c == '.':
			parts = append(parts, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, strings.TrimSpace(cur.String()))
}

// readFile reads a config file, naming it in the error.
func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return data, nil
}

// checkRange adds a problem unless lo <= d <= hi; what says what the
// bounds are for.
func checkRange(ps *problems, key string, d Duration, lo, hi time.Duration, what string) {
	if d.D() < lo || d.D() > hi {
		ps.add(key, "%s is out of range (%s..%s%s)", d.D(), lo, hi, what)
	}
}

// checkFile adds a problem unless path names a readable regular file.
func checkFile(ps *problems, key, path string) bool {
	st, err := os.Stat(path)
	switch {
	case err != nil:
		ps.add(key, "%v", err)
		return false
	case !st.Mode().IsRegular():
		ps.add(key, "%s is not a regular file", path)
		return false
	}
	return true
}

// checkCAFile adds a problem unless path holds PEM certificates.
func checkCAFile(ps *problems, key, path string) {
	if !checkFile(ps, key, path) {
		return
	}
	if _, err := tlsconf.LoadCAs(path); err != nil {
		ps.add(key, "%v", err)
	}
}

func checkLog(ps *problems, l Log) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(l.Level)); err != nil {
		ps.add("log.level", "%q is not a level (debug, info, warn, error)", l.Level)
	}
	if l.Format != "text" && l.Format != "json" {
		ps.add("log.format", "%q is not a format (text, json)", l.Format)
	}
}

func checkKeepAlive(ps *problems, key string, k KeepAlive) {
	if k.Idle == 0 {
		return // off
	}
	for _, f := range []struct {
		name string
		d    Duration
	}{{"idle", k.Idle}, {"interval", k.Interval}} {
		switch {
		case f.d < Duration(time.Second):
			ps.add(key+"."+f.name, "%s is below the kernel's 1s granularity (set idle = \"0s\" to turn keepalive off)", f.d.D())
		case f.d.D()%time.Second != 0:
			ps.add(key+"."+f.name, "%s is not a whole number of seconds; the kernel counts keepalive in seconds", f.d.D())
		case f.d.D() > 32767*time.Second:
			ps.add(key+"."+f.name, "%s is more than the kernel accepts (32767s, about 9h)", f.d.D())
		}
	}
	if k.Count < 1 || k.Count > 127 {
		ps.add(key+".count", "%d is out of range (1..127)", k.Count)
	}
}

func checkSession(ps *problems, s Session) {
	checkKeepAlive(ps, "keepalive.session", s.KeepAlive)
	checkRange(ps, "keepalive.session.user_timeout", s.UserTimeout, 0, time.Hour, "; 0 leaves the kernel's default of about 15 minutes")
	if s.KeepAlive.Idle > 0 && s.UserTimeout > 0 && s.UserTimeout.D() > 2*s.Sock().Bound() {
		// Linux lets TCP_USER_TIMEOUT replace the keepalive count when
		// both are set (tcp_keepalive_timer), so a large value delays the
		// detection of a dead idle session to itself.
		ps.add("keepalive.session.user_timeout", "%s is more than twice idle+interval*count (%s); it would delay detection of a dead idle session to %s", s.UserTimeout.D(), s.Sock().Bound(), s.UserTimeout.D())
	}
	if s.HeartbeatInterval < 0 || (s.HeartbeatInterval > 0 && s.HeartbeatInterval < Duration(100*time.Millisecond)) {
		ps.add("keepalive.session.heartbeat_interval", "%s is too small (0 turns the heartbeat off; otherwise at least 100ms)", s.HeartbeatInterval.D())
	}
	if s.HeartbeatInterval > Duration(10*time.Minute) {
		ps.add("keepalive.session.heartbeat_interval", "%s is too large (at most 10m; a dead peer would go unnoticed that long)", s.HeartbeatInterval.D())
	}
	if s.HeartbeatInterval > 0 {
		checkRange(ps, "keepalive.session.heartbeat_timeout", s.HeartbeatTimeout, 100*time.Millisecond, 10*time.Minute, "")
	}
}

// hostPort checks that s is host:port with a numeric port in range (0 allowed when zeroOK).
func hostPort(s string, zeroOK bool) error {
	if s == "" {
		return errors.New("is empty")
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return fmt.Errorf("%q has no port (want host:port)", s)
	}
	p, err := strconv.Atoi(s[i+1:])
	if err != nil || p < 0 || p > 65535 || (p == 0 && !zeroOK) {
		return fmt.Errorf("%q has no valid port (want host:port, port 1..65535)", s)
	}
	return nil
}
