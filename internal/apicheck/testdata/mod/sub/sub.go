package sub

// V is the only item of package sub.
var V, w = []map[string]*int{}, 0
