package server

import (
	"errors"
	"testing"
	"time"
)

// The most specific name wins (the name, then wildcards from the closest
// domain up), then the longest path prefix; a name belongs to one client;
// a released name is offline for a while.
func TestRouter(t *testing.T) {
	r := newRouter()
	alice, bob := &session{client: "alice"}, &session{client: "bob"}
	pl := func(name string) *publicListener { return &publicListener{name: name} }
	site, api, wild, deep := pl("site"), pl("api"), pl("wild"), pl("deep")
	for _, c := range []struct {
		ss       *session
		pl       *publicListener
		hosts    []string
		prefixes []string
	}{
		{alice, site, []string{"app.example.org"}, nil},
		{alice, api, []string{"app.example.org"}, []string{"/api", "/api/v2"}},
		{alice, wild, []string{"*.example.org"}, nil},
		{bob, deep, []string{"*.b.example.org"}, nil},
	} {
		if err := r.claim(c.ss, c.pl, c.hosts, c.prefixes); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		host, path string
		want       *publicListener
	}{
		{"app.example.org", "/", site},
		{"app.example.org", "/api/x", api},
		{"app.example.org", "/apix", api}, // a prefix, as nginx's location
		{"other.example.org", "/", wild},
		{"x.y.example.org", "/", wild},
		{"c.b.example.org", "/", deep},
		{"example.org", "/", nil},
		{"app.example.com", "/", nil},
	} {
		got, _ := r.lookup(c.host, c.path)
		if (got == nil) != (c.want == nil) || got != nil && got.pl != c.want {
			t.Errorf("lookup(%s, %s) = %v, want %v", c.host, c.path, got, c.want)
		}
	}
	var held *hostHeldError
	if err := r.claim(bob, pl("steal"), []string{"app.example.org"}, nil); !errors.As(err, &held) || held.holder != "alice" {
		t.Errorf("another client's name: %v", err)
	}
	if err := r.claim(alice, pl("dup"), []string{"app.example.org"}, []string{"/api"}); err == nil {
		t.Error("the same name and prefix twice in one session")
	}
	r.release(site, time.Now().Add(time.Hour))
	r.release(api, time.Now().Add(time.Hour))
	if got, offline := r.lookup("app.example.org", "/"); got != nil && got.pl != wild || offline && got != nil {
		t.Errorf("after release: %v %v", got, offline)
	}
	r.release(wild, time.Now().Add(time.Hour))
	if got, offline := r.lookup("app.example.org", "/"); got != nil || !offline {
		t.Errorf("a released name: %v, offline %v; want offline", got, offline)
	}
	r.sweep(time.Now().Add(2 * time.Hour))
	if _, offline := r.lookup("app.example.org", "/"); offline {
		t.Error("offline past its time")
	}
}
