package hidden

// H is public in an internal package: left out, but usable as a field type.
type H struct{ X int }
