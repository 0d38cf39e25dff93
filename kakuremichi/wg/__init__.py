"""WireGuard (Noise_IKpsk2, cookies, timers, replay window) as a sans-IO `device.Device` fed datagrams and a
clock, and `driver.WireGuardInterface`, the Trio UDP driver around it. One module per concept, as in
wireguard-go's device/."""
