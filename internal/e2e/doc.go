// Package e2e holds the end-to-end tests of tunneld and tunnelc: in-process
// (real sockets on 127.0.0.1, real yamux) and with the built binaries. It
// has no code of its own outside tests.
package e2e
