// Package fault holds the fault tests: tunneld and tunnelc run as built
// binaries inside network namespaces (a public host, the server, the client
// and the local service, each on its own link to a router), and the tests
// cut links silently, freeze a relay on the session path, or kill the
// server, then check that every leg notices within its configured bound and
// that the system heals. It has no code outside tests. The tests need root
// and iproute2; with CI=true a missing prerequisite fails them.
package fault
