package yamux

// LocalPatches is how many local patches this copy carries on top of
// upstream v0.1.2: the sections of PATCHES.md before "Local changes to
// upstream's tests" (fork_test.go keeps the two in step). Programs built
// with it can say so in their version.
const LocalPatches = 17

// Upstream is the hashicorp/yamux release this copy derives from.
const Upstream = "v0.1.2"
