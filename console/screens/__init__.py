"""The console's screens. Data screens (chargeback, hosts, help) read through console.datasource."""
