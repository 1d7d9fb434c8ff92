// Package fleet measures what one tunneld costs per client: it starts the
// built tunneld and N real client sessions in one process (the project's
// client package, each session with two tunnels), holds them idle, moves a
// little data through every tunnel, and restarts tunneld under them.
// `make bench-fleet` runs it. It has no code outside tests and asserts
// nothing about speed; it prints.
package fleet
